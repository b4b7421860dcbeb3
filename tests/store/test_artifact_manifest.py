"""The torch-free artifact manifest: a directory verifies only when its manifest is well formed and
every listed file matches; anything else is one ArtifactError naming what is wrong."""

import hashlib
import json

import pytest

from data.artifact_manifest import (ARTIFACT_FORMAT, MAX_MANIFEST_BYTES, ArtifactError, manifest_digest,
                                    verify_artifact, write_manifest)


def _artifact(d, **files):
    d.mkdir()
    for name, data in {"config.json": b'{"type": "native_flow"}', "stats.json": b"{}",
                       "model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ", **files}.items():
        (d / name).write_bytes(data)
    return write_manifest(d, kind="policy", lineage={"run": "r1"}, metrics={"success": 0.5})


def test_written_manifest_lists_every_file_and_verifies(tmp_path):
    d = tmp_path / "a"
    written = _artifact(d, **{"tokenizer.json": b"[1, 2]"})
    assert written["format"] == ARTIFACT_FORMAT and written["kind"] == "policy"
    assert written["files"]["tokenizer.json"] == hashlib.sha256(b"[1, 2]").hexdigest()
    assert sorted(written["files"]) == ["config.json", "model.safetensors", "stats.json", "tokenizer.json"]
    assert verify_artifact(d) == written
    assert manifest_digest(d) == hashlib.sha256((d / "manifest.json").read_bytes()).hexdigest()


@pytest.mark.parametrize("name, change, why", [
    ("model.safetensors", lambda p: p.write_bytes(b"garbage"), "model.safetensors does not match its sha256"),
    ("stats.json", lambda p: p.unlink(), "file stats.json is missing"),
    ("stats.json", lambda p: (p.unlink(), p.mkdir()), "file stats.json is missing"),
    ("manifest.json", lambda p: p.unlink(), "manifest.json missing or unreadable"),
])
def test_changed_files_are_named(tmp_path, name, change, why):
    d = tmp_path / "a"
    _artifact(d)
    change(d / name)
    with pytest.raises(ArtifactError, match=why):
        verify_artifact(d)


def _with_manifest(tmp_path, manifest) -> object:
    d = tmp_path / "a"
    _artifact(d)
    (d / "manifest.json").write_bytes(manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode())
    return d


def _good(tmp_path) -> dict:
    d = tmp_path / "good"
    return _artifact(d)


@pytest.mark.parametrize("edit, why", [
    (lambda m: [m], "malformed: Expected `object`, got `array`"),
    (lambda m: {**m, "files": list(m["files"])}, r"malformed: Expected `object`, got `array` - at `\$.files`"),
    (lambda m: {**m, "format": "recap-artifact/0"}, "not a recap-artifact/1 artifact"),
    (lambda m: {k: v for k, v in m.items() if k != "kind"}, "malformed: Object missing required field `kind`"),
    (lambda m: {**m, "files": {**m["files"], "../outside": "0" * 64}}, "lists '../outside', which is not a file name"),
    (lambda m: {**m, "files": {**m["files"], "..": "0" * 64}}, "lists '..', which is not a file name"),
    (lambda m: {**m, "files": {**m["files"], "sub/x": "0" * 64}}, "lists 'sub/x', which is not a file name"),
    (lambda m: {**m, "files": {**m["files"], "config.json": "abc"}}, "gives file config.json the digest 'abc', not a"),
    (lambda m: {**m, "files": {**m["files"], "config.json": "0" * 64 + "\n"}}, r"config.json the digest '0+\\n', not"),
    (lambda m: {**m, "files": {**m["files"], "config.json": 7}},
     r"malformed: Expected `str`, got `int` - at `\$.files\[...\]`"),
    (lambda m: {**m, "files": {k: v for k, v in m["files"].items() if k != "config.json"}},
     "manifest.json does not list config.json"),
    (lambda m: {**m, "lineage": "r1"}, r"malformed: Expected `object`, got `str` - at `\$.lineage`"),
    (lambda m: b'{"format": "recap-artifact/1", ', "manifest.json is not JSON"),
    (lambda m: b"\xff\xfe", "manifest.json is not JSON"),
    (lambda m: b" " * (MAX_MANIFEST_BYTES + 1), "larger than 4 MiB"),
])
def test_malformed_manifests_are_refused_naming_the_field(tmp_path, edit, why):
    d = _with_manifest(tmp_path, edit(_good(tmp_path)))
    with pytest.raises(ArtifactError, match=why):
        verify_artifact(d)

