"""The model store: names, create/get/list/rm/cp, dedup, verify-on-read, crash safety, doctor, blobs for pull."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from pocketgpt.errors import ConfigMismatch
from pocketgpt.model.checkpoint import load_model
from pocketgpt.serve.modelfile import Modelfile, ModelfileError, ModelNameError
from pocketgpt.serve.store import BlobError, ModelNotFound, Store, parse_name
from pocketgpt.serve.template import TemplateError
from tests.serve.tiny_store import make_tiny_model

pytestmark = pytest.mark.serve
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny models with the same tokenizer and different weights."""
    root = tmp_path_factory.mktemp("models")
    return make_tiny_model(root / "a", seed=0), make_tiny_model(root / "b", seed=1)


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "store")


def _sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _flip_byte(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    time.sleep(0.01)  # a later mtime even on coarse clocks
    with open(path, "r+b") as f:
        f.write(data)


# --- names -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "want"), [
    ("tiny", ("tiny", "latest")), ("tiny:v1", ("tiny", "v1")), ("Tiny:Q8_0", ("tiny", "Q8_0")),
    ("me/tiny-chat.2:latest", ("me/tiny-chat.2", "latest")), ("a_b", ("a_b", "latest")),
    ("  spaced  ", ("spaced", "latest")),
])
def test_parse_name(name, want):
    assert parse_name(name) == want


@pytest.mark.parametrize(("name", "word"), [
    ("", "empty"), ("../etc", "invalid model name"), ("a b", "invalid model name"), ("x:", "invalid tag"),
    (":v1", "invalid model name"), ("-x", "invalid model name"), ("模型", "lowercase letters"),
    ("a" * 81, "at most 80"), ("x:" + "t" * 129, "invalid tag"), ("a/b/c/d", "invalid model name"),
    ("x:a/b", "invalid"), ("a/../b", "invalid model name"), ("http://127.0.0.1:1/tiny", "pocketgpt pull"),
])
def test_bad_names(name, word):
    with pytest.raises(ModelNameError, match=word.replace("(", r"\(")):
        parse_name(name)


# --- create, read, list, remove, copy ---------------------------------------------------------------------

def test_create_materialize_load_gives_the_same_weights(store, model_dirs):
    m = store.create_from_dir("tiny", model_dirs[0])
    assert m.name == "tiny:latest" and m.digest.startswith("sha256:") and len(m.digest) == 71
    assert m.config["n_layer"] == 2 and m.config["d_model"] == 64
    assert m.size == sum(layer["size"] for layer in m.layers) > 0
    assert set(m.file_layers()) >= {"config.json", "model.safetensors", "pocketgpt-tokenizer.json"}
    assert m.details()["parameter_size"].endswith("K") and m.details()["format"] == "safetensors"
    from pocketgpt.model.checkpoint import load_config

    assert m.details()["family"] == load_config(model_dirs[0]).flavour
    d = store.materialize("tiny")
    assert store.materialize("tiny:latest") == d  # cached
    ours, tok = load_model(d)
    ref, ref_tok = load_model(model_dirs[0])
    for (k, a), (k2, b) in zip(ours.state_dict().items(), ref.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    assert tok.encode("你好 world") == ref_tok.encode("你好 world")
    for f in ("config.json", "model.safetensors"):  # the model directory's bytes, exactly
        assert (d / f).read_bytes() == (model_dirs[0] / f).read_bytes()
    # the manifest document is plain JSON naming each layer by digest
    doc = json.loads(store.manifest_path("tiny").read_text())
    assert all(store.has_blob(layer["digest"]) for layer in doc["layers"])
    assert m.to_json() == doc


def test_dedup_two_models_share_the_tokenizer_blob(store, model_dirs):
    a = store.create_from_dir("a", model_dirs[0])
    b = store.create_from_dir("b", model_dirs[1])
    ta, tb = a.file_layers()["pocketgpt-tokenizer.json"], b.file_layers()["pocketgpt-tokenizer.json"]
    assert ta["digest"] == tb["digest"]
    assert a.file_layers()["model.safetensors"]["digest"] != b.file_layers()["model.safetensors"]["digest"]
    blobs = [p for p in store.blobs.iterdir() if p.name.startswith("sha256-")]
    digests = {layer["digest"] for m in (a, b) for layer in m.layers}
    assert len(blobs) == len(digests) < len(a.layers) + len(b.layers)  # shared files stored once
    on_disk = sum(p.stat().st_size for p in blobs)
    assert on_disk < a.size + b.size
    # removing one keeps the blobs the other still uses
    store.remove("a")
    assert store.names() == ["b:latest"]
    assert store.has_blob(tb["digest"]) and not store.has_blob(a.file_layers()["model.safetensors"]["digest"])
    assert store.doctor()["ok"]


def test_modelfile_inherits_from_a_store_model_and_overrides(store, model_dirs, tmp_path):
    store.create_from_dir("base", model_dirs[0])
    (tmp_path / "Modelfile").write_text('FROM base\nPARAMETER temperature 0.2\nPARAMETER stop "<|end|>"\n'
                                        'SYSTEM 你是助手。\nTEMPLATE chatml\nMESSAGE user hi\nMESSAGE assistant hello\n'
                                        "LICENSE MIT\n", encoding="utf-8")
    chat = store.create("chat:v1", Modelfile.load(tmp_path / "Modelfile"))
    assert chat.params == {"temperature": 0.2, "stop": ["<|end|>"]}
    assert (chat.system, chat.template, chat.license) == ("你是助手。", "chatml", ["MIT"])
    assert chat.messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    base_files = store.get("base").file_layers()
    assert chat.file_layers() == base_files  # same weights, no copy
    child = store.create("child", Modelfile.parse("FROM chat:v1\nPARAMETER top_k 5\nSYSTEM other\n"))
    assert child.params == {"temperature": 0.2, "stop": ["<|end|>"], "top_k": 5}
    assert (child.system, child.template, child.license) == ("other", "chatml", ["MIT"])
    again = store.create("again", Modelfile.parse(chat.modelfile()))  # show --modelfile recreates it
    assert (again.params, again.system, again.template, again.messages, again.license) == \
        (chat.params, chat.system, chat.template, chat.messages, chat.license)
    assert [m.name for m in store.list()][0] in {"again:latest", "child:latest"}  # newest first


def test_create_errors_are_clear(store, model_dirs, tmp_path):
    with pytest.raises(ModelfileError, match="no such directory, GGUF file or store model"):
        store.create("x", Modelfile.parse("FROM nothing-here"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelfileError, match="not a model directory"):
        store.create_from_dir("x", tmp_path / "empty")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelfileError, match=".gguf"):
        store.create("x", Modelfile.parse(f"FROM {tmp_path / 'weights.bin'}"))
    with pytest.raises(TemplateError, match="block is never closed"):
        store.create("x", Modelfile.parse(f"FROM {model_dirs[0]}\nTEMPLATE {{{{ if .System }}}}oops\n"))
    with pytest.raises(ModelfileError, match="ADAPTER"):
        store.create("x", Modelfile.parse(f"FROM {model_dirs[0]}\nADAPTER {tmp_path / 'empty'}\n"))
    bad = tmp_path / "badconfig"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    (bad / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigMismatch, match="not a valid model config"):
        store.create_from_dir("x", bad)
    assert store.names() == []


def test_get_unknown_lists_known_names(store, model_dirs):
    with pytest.raises(ModelNotFound, match="the store is empty"):
        store.get("nope")
    store.create_from_dir("tiny", model_dirs[0])
    with pytest.raises(ModelNotFound, match=r"'nope:latest' not found \(models here: tiny:latest\)"):
        store.get("nope")
    with pytest.raises(ModelNotFound):
        store.remove("nope")


def test_copy_shares_blobs_and_survives_removing_the_source(store, model_dirs):
    src = store.create_from_dir("tiny", model_dirs[0])
    store.copy("tiny", "me/tiny:v2")
    dst = store.get("me/tiny:v2")
    assert dst.digest == src.digest and dst.name == "me/tiny:v2"
    store.remove("tiny")
    assert store.names() == ["me/tiny:v2"]
    load_model(store.materialize("me/tiny:v2"))
    store.remove("me/tiny:v2")
    assert store.names() == [] and not any(store.blobs.glob("sha256-*"))
    assert not (store.manifests / "me").exists()  # empty namespace directories go too


def test_import_path_names_the_model_after_the_file(store, model_dirs, tmp_path):
    """What `pocketgpt pull ./DIR` or `pull FILE.gguf` does with a local path."""
    link = tmp_path / "My Tiny_Model.v2"
    link.symlink_to(model_dirs[0], target_is_directory=True)
    m = store.import_path(link)
    assert m.name == "my-tiny_model.v2:latest"
    assert store.import_path(model_dirs[0], name="other:v1").name == "other:v1"
    with pytest.raises(ModelfileError, match="no such model directory or GGUF file"):
        store.import_path(tmp_path / "missing.gguf")


def test_a_modelfile_built_from_json_is_checked(store, model_dirs):
    """The server builds Modelfiles from /api/create bodies: wrong types are clear errors, not crashes."""
    for fields, word in [({"system": 3}, "SYSTEM must be a string"), ({"messages": [{"role": "bot", "content": "x"}]},
                         "message 0"), ({"parameters": {"top_p": 3}}, "out of range"), ({"license": "MIT"}, "LICENSE"),
                         ({"from_": ""}, "FROM is missing")]:
        mf = Modelfile(**{"from_": str(model_dirs[0]), **fields})
        with pytest.raises(ModelfileError, match=word):
            store.create("x", mf)
    m = store.create("ok", Modelfile(from_=str(model_dirs[0]), parameters={"stop": "<|end|>", "top_k": 3},
                                     messages=[{"role": "user", "content": "你好"}]))
    assert m.params == {"stop": ["<|end|>"], "top_k": 3} and m.messages[0]["content"] == "你好"


def test_removing_one_name_keeps_the_cache_a_copy_uses(store, model_dirs):
    store.create_from_dir("a", model_dirs[0])
    store.copy("a", "b")
    d = store.materialize("b")
    store.remove("a")
    assert d.is_dir() and store.materialize("b") == d
    load_model(d)


# --- verification on read -------------------------------------------------------------------------------------

def test_flipped_byte_in_weights_is_a_clear_error(store, model_dirs):
    m = store.create_from_dir("tiny", model_dirs[0])
    store.materialize("tiny")  # cached first: the check must still notice the change
    blob = store.blob_path(m.file_layers()["model.safetensors"]["digest"])
    _flip_byte(blob, offset=-3)
    with pytest.raises(BlobError, match=r"corrupt.*doctor --repair"):
        store.materialize("tiny")


def test_flipped_byte_in_a_small_blob_is_a_clear_error(store, model_dirs):
    store.create("p", Modelfile.parse(f"FROM {model_dirs[0]}\nSYSTEM hello there\n"))
    layer = next(x for x in store.get("p").layers if x["mediaType"].endswith("system"))
    _flip_byte(store.blob_path(layer["digest"]), offset=0)
    with pytest.raises(BlobError, match="corrupt"):
        store.get("p")


def test_add_blob_verifies_the_digest(store, tmp_path):
    f = tmp_path / "data"
    f.write_bytes("中文 bytes".encode() * 1000)
    with pytest.raises(BlobError, match="expected sha256:0000"):
        store.add_blob(f, "sha256:" + "0" * 64)
    assert not any(store.blobs.iterdir())  # nothing left behind, not even a temporary
    assert store.add_blob(f, _sha(f)) == _sha(f) and store.has_blob(_sha(f))
    with pytest.raises(BlobError, match="invalid digest"):
        store.blob_path("sha256:../../etc/passwd")


def test_partial_download_is_moved_in_after_verification(store, model_dirs, tmp_path):
    """What pull does: blobs into partial/ (resumable), add_blob(partial, digest), then put_manifest."""
    src = Store(tmp_path / "other")
    m = src.create("tiny", Modelfile.parse(f"FROM {model_dirs[0]}\nSYSTEM hi\n"))
    with pytest.raises(BlobError, match="not in the store"):
        store.put_manifest("tiny", m.to_json())
    for layer in m.layers:
        part = store.partial_blob(layer["digest"])
        data = src.blob_path(layer["digest"]).read_bytes()
        part.write_bytes(data[: len(data) // 2])  # interrupted ...
        with open(part, "ab") as f:  # ... and resumed from its length
            f.write(data[len(data) // 2:])
        assert store.add_blob(part, layer["digest"]) == layer["digest"]
        assert not part.exists()
    got = store.put_manifest("tiny", m.to_json())
    assert got.digest == m.digest and got.system == "hi"
    bad = store.partial_blob("sha256:" + "1" * 64)
    bad.write_bytes(b"garbage")
    with pytest.raises(BlobError, match="corrupted, pull again"):
        store.add_blob(bad, "sha256:" + "1" * 64)
    assert not bad.exists()
    with pytest.raises(BlobError, match="not a model file"):
        store.put_manifest("evil", {"layers": [{"mediaType": "application/vnd.pocketgpt.file",
                                                "digest": m.layers[0]["digest"], "size": 1, "name": "../../x"}]})


# --- crash safety ----------------------------------------------------------------------------------------------

def test_a_failed_blob_write_leaves_no_model(store, model_dirs, monkeypatch):
    real_fsync, calls = os.fsync, []

    def disk_full(fd):  # the second blob's write fails, as on a full disk
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        store.create_from_dir("tiny", model_dirs[0])
    monkeypatch.undo()
    assert store.names() == [] and store.list() == []
    assert not [p for p in store.blobs.iterdir() if p.name.startswith(".")]  # the temporary was removed
    report = store.doctor(repair=True)
    assert len(report["orphaned"]) == 1 and report["repaired"]["deleted_orphans"] == 1
    store.create_from_dir("tiny", model_dirs[0])
    assert store.doctor()["ok"]


CRASH = textwrap.dedent("""
    import os, sys, time
    from pocketgpt.serve.store import Store
    real = os.fsync
    def slow_fsync(fd):  # the weights are written but not yet synced or renamed: the process dies here
        if os.fstat(fd).st_size > 1_000_000:
            print("writing", flush=True)
            time.sleep(60)
        real(fd)
    os.fsync = slow_fsync
    Store(sys.argv[1]).create_from_dir("big", sys.argv[2])
""")


def test_killed_mid_blob_write_leaves_no_visible_model(store, model_dirs, tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    for f in model_dirs[0].iterdir():
        (big / f.name).write_bytes(f.read_bytes())
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(big / "model.safetensors"))
    tensors["pad"] = torch.zeros(1 << 20)  # 4 MB: makes this the one slow write
    save_file(tensors, str(big / "model.safetensors"))
    proc = subprocess.Popen([sys.executable, "-c", CRASH, str(store.root), str(big)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        tmp = [p for p in store.blobs.iterdir() if p.name.startswith(".blob.")]
        assert tmp and tmp[0].stat().st_size > 1_000_000  # the half-finished blob is on disk ...
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert store.names() == []  # ... but no model names it
    with pytest.raises(ModelNotFound):
        store.get("big")
    for p in store.blobs.glob("sha256-*"):  # every blob under a digest name is whole
        assert _sha(p) == "sha256:" + p.name.removeprefix("sha256-")
    report = store.doctor()
    assert not report["ok"] and report["orphaned"] and not report["corrupt"]
    m = store.create_from_dir("big", big)  # the lock died with the process; a retry completes
    assert m.details()["parameter_size"]
    assert store.doctor()["orphaned"] == []


# --- doctor -------------------------------------------------------------------------------------------------------

def test_doctor_finds_and_repairs_every_kind_of_damage(store, model_dirs):
    a = store.create_from_dir("a", model_dirs[0])
    store.create_from_dir("b", model_dirs[1])
    store.create("c", Modelfile.parse(f"FROM {model_dirs[0]}\nSYSTEM c\n"))
    assert store.doctor()["ok"]
    orphan = store.add_bytes(b"nobody uses me")
    weights_b = store.get("b").file_layers()["model.safetensors"]["digest"]
    _flip_byte(store.blob_path(weights_b))  # corrupt: b's weights
    sys_c = next(x for x in store.get("c").layers if x["mediaType"].endswith("system"))["digest"]
    store.blob_path(sys_c).unlink()  # missing: c's system prompt
    report = store.doctor()
    assert not report["ok"]
    assert report["orphaned"] == [orphan]
    assert report["corrupt"] == [weights_b]
    assert {b["name"] for b in report["broken"]} == {"b:latest", "c:latest"}
    assert "corrupt blob" in next(b for b in report["broken"] if b["name"] == "b:latest")["problem"]
    assert "missing blob" in next(b for b in report["broken"] if b["name"] == "c:latest")["problem"]
    # list reads only small blobs: c (missing system prompt) is skipped, b's weights are checked when loaded
    assert [m.name for m in store.list()] == ["b:latest", "a:latest"]
    with pytest.raises(BlobError, match="corrupt"):
        store.materialize("b")

    fixed = store.doctor(repair=True)["repaired"]
    assert fixed["quarantined_blobs"] == 1 and fixed["quarantined_manifests"] == 2 and fixed["deleted_orphans"] == 1
    assert (Path(fixed["quarantine"]) / "blobs" / store.blob_path(weights_b).name).is_file()
    assert store.names() == ["a:latest"]
    store.doctor(repair=True)  # blobs only the quarantined manifests used are orphans now
    assert store.doctor()["ok"]
    assert load_model(store.materialize("a"))[0] is not None and store.get("a").digest == a.digest


def test_doctor_reports_an_unreadable_manifest(store, model_dirs):
    store.create_from_dir("a", model_dirs[0])
    store.manifest_path("a").write_text("{ torn")
    with pytest.raises(BlobError, match="unreadable"):
        store.get("a")
    report = store.doctor(repair=True)
    assert report["broken"][0]["name"] == "a:latest" and "unreadable" in report["broken"][0]["problem"]
    assert store.names() == []


# --- the CLI verbs ------------------------------------------------------------------------------------------------

def test_cli_verbs(tmp_path, model_dirs, monkeypatch, capsys):
    from pocketgpt.cli import main

    monkeypatch.setenv("POCKETGPT_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)

    def cli(*argv: str) -> tuple[int, str, str]:
        rc = main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err

    rc, out, _ = cli("create", "tiny", "--from", str(model_dirs[0]))
    assert rc == 0 and out.startswith("created tiny:latest")
    Path("Modelfile").write_text('FROM tiny\nPARAMETER temperature 0.3\nSYSTEM """多行\nsystem"""\nLICENSE MIT\n',
                                 encoding="utf-8")
    assert cli("create", "chat:v1")[0] == 0  # ./Modelfile by default
    rc, out, _ = cli("list")
    assert out.splitlines()[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"] and "chat:v1" in out and "tiny:latest" in out
    rc, out, _ = cli("list", "--json")
    assert {m["name"] for m in json.loads(out)["models"]} == {"chat:v1", "tiny:latest"}
    rc, out, _ = cli("show", "chat:v1")
    assert "embedding length    64" in out and "temperature         0.3" in out and "多行" in out
    assert cli("show", "chat:v1", "--parameters")[1] == "temperature 0.3\n"
    assert cli("show", "chat:v1", "--system")[1] == "多行\nsystem\n"
    assert cli("show", "chat:v1", "--license")[1] == "MIT\n"
    assert cli("show", "chat:v1", "--modelfile")[1].splitlines()[1] == "FROM chat:v1"
    info = json.loads(cli("show", "chat:v1", "--json")[1])
    assert info["model_info"]["context_length"] == 128 and info["parameters"] == {"temperature": 0.3}
    assert cli("cp", "chat:v1", "copy")[0] == 0
    rc, out, _ = cli("rm", "chat:v1", "copy")
    assert rc == 0 and "deleted 'copy'" in out
    rc, _, err = cli("rm", "tiny", "nope")  # all or nothing
    assert rc == 2 and "'nope:latest' not found" in err and Store().names() == ["tiny:latest"]
    rc, out, _ = cli("doctor")
    assert rc == 0 and "everything is in order" in out
    Store().add_bytes(b"orphan")
    rc, out, _ = cli("doctor")
    assert rc == 1 and "orphaned blob" in out and "doctor --repair" in out
    rc, out, _ = cli("doctor", "--repair", "--json")
    assert rc == 0 and json.loads(out)["repaired"]["deleted_orphans"] == 1
    rc, _, err = cli("create", "Bad Name", "--from", str(model_dirs[0]))
    assert rc == 2 and "invalid model name" in err
    Path("Modelfile").write_text("FROM tiny\nPARAMETER top_p 7\n")
    rc, _, err = cli("create", "x")
    assert rc == 2 and "Modelfile:2:" in err and "out of range" in err


def test_concurrent_writers_keep_the_store_consistent(store, model_dirs):
    """Creates, copies and removes racing in threads (each takes the store's file lock, as separate
    processes do): every surviving model loads and doctor finds nothing wrong."""
    import threading

    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for j in range(3):
                name = f"w{i}-{j}"
                store.create(name, Modelfile.parse(f"FROM {model_dirs[i % 2]}\nSYSTEM worker {i}\n"))
                store.copy(name, f"{name}-copy")
                store.remove(name if j % 2 else f"{name}-copy")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(store.names()) == 12
    report = store.doctor()
    assert report["ok"], report
    for name in store.names():
        store.verify_blob(store.get(name).file_layers()["model.safetensors"]["digest"])


def test_a_name_cannot_also_be_a_namespace(store, model_dirs):
    store.create_from_dir("me/tiny", model_dirs[0])  # manifests/me/tiny/latest
    with pytest.raises(ModelNameError, match="clashes"):
        store.copy("me/tiny", "me/tiny/latest")  # would need manifests/me/tiny/latest/latest
    with pytest.raises(ModelNameError, match="clashes"):
        store.copy("me/tiny", "me:tiny")  # would need the directory manifests/me/tiny as a file
    assert store.names() == ["me/tiny:latest"]


def test_put_manifest_checks_layer_sizes(store, model_dirs):
    doc = store.create_from_dir("a", model_dirs[0]).to_json()
    doc["layers"][0] = {**doc["layers"][0], "size": doc["layers"][0]["size"] + 1}
    with pytest.raises(BlobError, match="says size"):
        store.put_manifest("b", doc)
