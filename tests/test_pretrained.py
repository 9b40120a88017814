"""Where T5 comes from: a local folder, the model mirror or the hub; weights when present, else a loud random init."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from elmrec.config import ModelSettings, T5Size
from elmrec.pretrained import (
    RandomInitRefused,
    _hub_reachable,
    check_weights,
    load_t5,
    load_tokenizer,
    resolve_model_source,
)
from tests.conftest import T5_SMALL, TINY_T5

TINY = T5Size(**TINY_T5)


def test_a_full_shape_without_weights_is_refused_unless_allowed() -> None:
    """No silent random init at paper scale: the error names every way out."""
    with pytest.raises(RandomInitRefused) as refused:
        load_t5(ModelSettings(model_name=str(T5_SMALL)))
    message = str(refused.value)
    assert "no weight file" in message and str(T5_SMALL) in message
    for way_out in ("hub", "ELMREC_MODEL_MIRROR", "model.allow_random_init=true"):
        assert way_out in message, way_out


def test_load_t5_without_weights_warns_when_allowed_and_reduces(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="elmrec.pretrained"):
        t5, pretrained = load_t5(ModelSettings(model_name=str(T5_SMALL), allow_random_init=True))
    assert not pretrained and t5.config.d_model == 512 and t5.config.num_layers == 6
    assert any(r.levelno == logging.WARNING and "RANDOMLY" in r.getMessage() for r in caplog.records)
    small, pretrained = load_t5(ModelSettings(model_name=str(T5_SMALL), reduced=TINY))
    assert not pretrained and small.config.vocab_size == 32101
    assert (small.config.d_model, small.config.num_layers, small.config.num_decoder_layers) == (32, 1, 1)
    assert small.shared.weight.shape == (32101, 32)


def test_weights_in_the_folder_are_loaded(tmp_path: Path) -> None:
    """A folder holding weights (as a hub download or a mirror would) gives exactly those weights."""
    folder = tmp_path / "t5-tiny"
    shutil.copytree(T5_SMALL, folder)
    config = T5Config.from_pretrained(T5_SMALL)
    config.update(TINY.model_dump())
    torch.manual_seed(3)
    saved = T5ForConditionalGeneration(config)
    saved.save_pretrained(folder)
    loaded, pretrained = load_t5(ModelSettings(model_name="t5-tiny", model_mirror=str(tmp_path)))
    assert pretrained
    reference = saved.state_dict()
    assert all(torch.equal(value, reference[name]) for name, value in loaded.state_dict().items())


def test_mirror_resolution_and_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ELMREC_MODEL_MIRROR", raising=False)
    assert resolve_model_source(ModelSettings()) == ("t5-small", False)
    assert resolve_model_source(ModelSettings(model_mirror=str(T5_SMALL.parent))) == (str(T5_SMALL), True)
    monkeypatch.setenv("ELMREC_MODEL_MIRROR", str(T5_SMALL.parent))
    assert resolve_model_source(ModelSettings()) == (str(T5_SMALL), True)
    tokenizer = load_tokenizer(ModelSettings())
    assert tokenizer("user_12252").input_ids[-1] == tokenizer.eos_token_id


def test_a_missing_model_names_the_settings_to_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ELMREC_MODEL_MIRROR", raising=False)
    monkeypatch.setattr("huggingface_hub.is_offline_mode", lambda: True)
    with pytest.raises(OSError, match=r"(?s)cannot load 'no-such-model'.*ELMREC_MODEL_MIRROR"):
        load_tokenizer(ModelSettings(model_name="no-such-model"))


def test_offline_mode_skips_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("huggingface_hub.is_offline_mode", lambda: True)
    assert not _hub_reachable()


def test_check_weights_refuses_before_any_work_unless_allowed(tmp_path) -> None:
    folder = tmp_path / "t5-small"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(RandomInitRefused, match=r"model\.allow_random_init=true"):
        check_weights(ModelSettings(model_name=str(folder)))
    check_weights(ModelSettings(model_name=str(folder), allow_random_init=True))
    check_weights(ModelSettings(model_name=str(folder), reduced={}))
    (folder / "model.safetensors").write_bytes(b"")
    check_weights(ModelSettings(model_name=str(folder)))
