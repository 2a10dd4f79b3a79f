"""A hub id without network fails at once with the fix, or loads from the local cache."""

import socket

import pytest
from huggingface_hub import constants

from co2sam.hub import HubUnreachable, hub_options
from co2sam.models.loading import load_sam


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """DNS fails (as without network); an empty Hugging Face cache. Returns the lookups."""
    lookups = []

    def getaddrinfo(host, *args, **kwargs):
        lookups.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return lookups


def test_a_hub_id_without_network_fails_after_one_lookup(no_network):
    with pytest.raises(HubUnreachable) as raised:
        load_sam("facebook/sam-vit-base")
    message = str(raised.value)
    assert message.startswith("no network (cannot resolve huggingface.co)")
    assert "pass a local folder of SAM" in message
    assert no_network == ["huggingface.co"]  # no retries: one lookup, then the answer


def test_offline_mode_is_answered_without_a_lookup(no_network, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnreachable, match="HF_HUB_OFFLINE is set"):
        hub_options("IDEA-Research/grounding-dino-base", "Grounding DINO")
    assert no_network == []


def test_a_cached_model_is_loaded_from_the_cache_without_network(no_network, tmp_path):
    snapshot = tmp_path / "hub" / "models--owner--model" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc")
    assert hub_options("owner/model") == {"local_files_only": True}
    assert hub_options(str(tmp_path)) == {}  # a local folder: nothing to resolve
    assert hub_options(str(tmp_path / "missing")) == {}  # not a hub id: from_pretrained says
    assert no_network == ["huggingface.co"]  # for owner/model only
