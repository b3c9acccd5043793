"""Pushing a model folder to the Hub: what would be sent (recorded by a local double, never sent), and the
errors that say why a push cannot happen (no token, offline, no network) with nothing lost locally."""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading

import pytest
import yaml
from huggingface_hub import HfApi, ModelCard

from helpers.hub_double import RecordingHub
from hftrain.cli import main as cli_main
from hftrain.recipe.checks import check_values
from hftrain.recipe.schema import HubConfig, Recipe
from hftrain.report import hub_push
from hftrain.report.hub_push import PushError, push_folder


def finished_run(tmp_path):
    """A run directory as a finished run leaves it (hand-made: no training): recipe.yaml, plots/, and
    model/ and best/ with config.json, weights and hftrain_info.json."""
    run_dir = tmp_path / "run"
    recipe = dataclasses.asdict(Recipe(output_dir=str(run_dir)))
    recipe["data"]["synthetic"] = {"kind": "shapes"}
    (run_dir / "plots").mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (run_dir / "plots" / "pr_curves.png").write_bytes(b"\x89PNG curves")
    for name, value in (("model", 0.31), ("best", 0.35)):
        folder = run_dir / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "rt_detr", "id2label": {"0": "rectangle"}}))
        (folder / "model.safetensors").write_bytes(b"weights of " + name.encode())
        (folder / "hftrain_info.json").write_text(json.dumps({"epoch": 7, "metrics": {"map": value, "map_50": 0.5}}))
    return run_dir


@pytest.fixture
def recorded(monkeypatch):
    """HfApi replaced by the recording double, with a token in HF_TOKEN; returns the list of calls."""
    calls: list[dict] = []
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(hub_push, "HfApi", RecordingHub.factory(calls))
    return calls


def test_push_sends_the_folder_with_its_card(tmp_path, recorded, capsys):
    run_dir = finished_run(tmp_path)
    code = cli_main(["push", str(run_dir), "someone/shapes-rtdetr", "--private", "--revision", "v1", "--weights", "best"])
    assert code == 0, capsys.readouterr().err
    assert [c["call"] for c in recorded] == ["create_repo", "create_branch", "upload_folder"]
    assert recorded[0] == {"call": "create_repo", "repo_id": "someone/shapes-rtdetr", "private": True,
                           "token": "hf_test_token"}
    assert recorded[1]["branch"] == "v1"
    upload = recorded[2]
    assert upload["folder"] == str(run_dir / "best") and upload["revision"] == "v1"
    assert sorted(upload["files"]) == ["README.md", "config.json", "hftrain_info.json", "model.safetensors",
                                       "plots/pr_curves.png"]
    card = ModelCard(upload["card"])
    assert card.data.eval_results[0].metric_type == "map" and card.data.eval_results[0].metric_value == 0.35
    assert card.data.datasets == ["shapes"] and card.data.model_name == "shapes-rtdetr"
    assert 'pipeline("object-detection", model="someone/shapes-rtdetr")' in card.text
    assert "pushed" in capsys.readouterr().out
    # the default: model/, on the default branch, public unless asked
    recorded.clear()
    assert cli_main(["push", str(run_dir), "someone/shapes-rtdetr"]) == 0
    assert [c["call"] for c in recorded] == ["create_repo", "upload_folder"]
    assert recorded[0]["private"] is False and recorded[1]["folder"] == str(run_dir / "model")
    assert recorded[1]["revision"] is None and "after epoch 7" in recorded[1]["message"]


def test_without_a_token_the_error_says_how_to_log_in_and_nothing_is_lost(tmp_path, monkeypatch, capsys):
    run_dir = finished_run(tmp_path)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no token file there either
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))  # read at import
    assert cli_main(["push", str(run_dir), "someone/shapes-rtdetr"]) == 1
    err = capsys.readouterr().err
    assert "no Hugging Face token found" in err and "hf auth login" in err and "HF_TOKEN" in err
    assert (run_dir / "model" / "model.safetensors").read_bytes() == b"weights of model"
    assert (run_dir / "model" / "README.md").is_file()  # the card was written; only the upload did not happen


def test_a_network_failure_is_named_as_such(tmp_path, monkeypatch):
    run_dir = finished_run(tmp_path)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    unreachable = HfApi(endpoint="http://127.0.0.1:9", token="hf_test_token")  # a local port nobody listens on
    with pytest.raises(PushError, match=r"network error, the Hub could not be reached \(ConnectError.*is unchanged"):
        push_folder(run_dir / "model", "someone/m", api=unreachable)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(PushError, match="HF_HUB_OFFLINE is set"):
        push_folder(run_dir / "model", "someone/m", api=unreachable)
    assert (run_dir / "model" / "model.safetensors").read_bytes() == b"weights of model"


def test_a_refused_token_is_named_with_how_to_log_in(tmp_path, monkeypatch):
    """A local server answering 401 as the Hub does to a bad token (the real client, no network)."""
    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 -- http.server's naming
            body = b'{"error": "Invalid credentials in Authorization header"}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    run_dir = finished_run(tmp_path)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    server = http.server.HTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = HfApi(endpoint=f"http://127.0.0.1:{server.server_port}", token="hf_wrong")
        with pytest.raises(PushError, match=r"the Hub answered 401.*Invalid credentials.*the token was refused or has "
                                            r"no write access to someone/m: log in with `hf auth login`"):
            push_folder(run_dir / "model", "someone/m", api=api)
    finally:
        server.shutdown()
        server.server_close()


def test_a_bad_repo_id_or_folder_is_refused_before_any_request(tmp_path, recorded, capsys):
    run_dir = finished_run(tmp_path)
    with pytest.raises(PushError, match="'a/b/c' is not a Hub repository id"):
        push_folder(run_dir / "model", "a/b/c")
    assert cli_main(["push", str(tmp_path / "nowhere"), "someone/m"]) == 2
    assert "holds no saved model" in capsys.readouterr().err
    assert recorded == []


def test_hub_push_needs_a_repo_id_in_the_recipe():
    problems: list[str] = []
    check_values(Recipe(hub=HubConfig(push=True)), problems)
    assert len(problems) == 1 and problems[0] == ("hub.repo_id: hub.push needs the repository to upload to, "
                                                  "e.g. hub.repo_id=your-name/default")
    problems = []
    check_values(Recipe(hub=HubConfig(push_best=True, repo_id="a b")), problems)
    assert problems == ["hub.repo_id: 'a b' is not a Hub repository id (" + problems[0].split(" (", 1)[1]]
    problems = []
    check_values(Recipe(hub=HubConfig(push=True, push_best=True, repo_id="someone/m")), problems)
    assert problems == []
