"""A local stand-in for ``huggingface_hub.HfApi`` that records what an upload would send (every call, the
files of the uploaded folder and its model card as they were at the call) and never touches the network.

Install it with ``monkeypatch.setattr(hftrain.report.hub_push, "HfApi", RecordingHub.factory(calls))``:
``hftrain.report.hub_push.push_folder`` then finds the token as usual (HF_TOKEN) and talks to the double.
"""

from __future__ import annotations

from pathlib import Path


class RecordingHub:
    def __init__(self, calls: list[dict], token=None, failures: list[BaseException] | None = None):
        self.calls = calls
        self.token = token
        self.failures = failures if failures is not None else []

    @classmethod
    def factory(cls, calls: list[dict], failures: list[BaseException] | None = None):
        """A drop-in for the ``HfApi`` class: each instance appends to ``calls``; each upload first pops and
        raises the next of ``failures`` (if any are left)."""
        failures = failures if failures is not None else []
        return lambda token=None, **_: cls(calls, token, failures)

    def create_repo(self, repo_id, *, private=None, exist_ok=False, repo_type=None, **_):
        self.calls.append({"call": "create_repo", "repo_id": repo_id, "private": private, "token": self.token})

    def create_branch(self, repo_id, *, branch, exist_ok=False, repo_type=None, **_):
        self.calls.append({"call": "create_branch", "repo_id": repo_id, "branch": branch})

    def upload_folder(self, *, repo_id, folder_path, revision=None, commit_message=None, **_):
        if self.failures:
            raise self.failures.pop(0)
        folder = Path(folder_path)
        files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
        card = (folder / "README.md").read_text() if (folder / "README.md").is_file() else None
        self.calls.append({"call": "upload_folder", "repo_id": repo_id, "folder": str(folder), "revision": revision,
                           "message": commit_message, "files": files, "card": card})
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0123abcd"})()
