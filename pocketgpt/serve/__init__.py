"""Serving: the model store and the HTTP server (Ollama- and OpenAI-compatible).

    store.py      named models (manifests) over sha256 blobs under $POCKETGPT_HOME/models
    modelfile.py  the Modelfile recipe: FROM, PARAMETER, SYSTEM, TEMPLATE, ADAPTER, MESSAGE, LICENSE
    template.py   a model's chat template: a named ChatTemplate or an Ollama Go-template subset
    doctor.py     store health: orphaned / corrupt blobs, broken manifests; repair
    chat_cli.py   `pocketgpt run NAME`: the interactive chat (REPL) over the engine
    api.py ...    the HTTP server, runner (model loading, keep_alive) and transfer (pull/push)

Uses text/, model/ and infer/; nothing outside serve/ imports it except the CLI's commands.
"""
