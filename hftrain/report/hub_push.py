"""Uploading a model folder (``model/`` or ``best/``) to the Hugging Face Hub with ``huggingface_hub``:
``create_repo`` (kept when it exists), ``create_branch`` for a ``revision``, then ``upload_folder`` in one
commit. Nothing local is changed by an upload.

A push that cannot happen raises :class:`PushError` with one line saying which: no token (and how to log
in), offline mode, the network, or what the Hub answered (a token without write access, a name taken...).
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, HTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import validate_repo_id

LOGIN_HINT = ("log in with `hf auth login`, or set the HF_TOKEN environment variable "
              "to a token with write access (https://huggingface.co/settings/tokens)")


class PushError(RuntimeError):
    """An upload to the Hub failed or could not start; the message says why and what to do."""


def push_folder(folder: Path, repo_id: str, private: bool = False, revision: str | None = None,
                commit_message: str | None = None, api: HfApi | None = None) -> str:
    """Upload every file under ``folder`` to the model repository ``repo_id`` (created, ``private`` if asked,
    when missing) on branch ``revision`` (created when missing; None: the default branch). Returns the
    commit's URL. ``api``: the client to use (a test's double); by default ``HfApi`` with the token found
    by ``huggingface_hub.get_token`` (HF_TOKEN, else the login's token file)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise PushError(f"push: {folder} is not a saved model (no config.json)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise PushError(f"push: {repo_id!r} is not a Hub repository id, user-or-org/name ({err})") from None
    if api is None:
        token = get_token()
        if not token:
            raise PushError(f"push to {repo_id}: no Hugging Face token found; {LOGIN_HINT}. {folder} is unchanged")
        api = HfApi(token=token)
    what = f"push of {folder} to {repo_id}" + (f" (revision {revision})" if revision else "")
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision,
                                   commit_message=commit_message or f"hftrain: upload {folder.name}/")
    except OfflineModeIsEnabled:
        raise PushError(f"{what}: HF_HUB_OFFLINE is set, so huggingface_hub makes no requests; unset it to "
                        f"push. {folder} is unchanged") from None
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        reason = " ".join(str(err).split())[:300]
        hint = (f"; the token was refused or has no write access to {repo_id}: {LOGIN_HINT}"
                if status in (401, 403) else "")
        raise PushError(f"{what}: the Hub answered {status or 'an error'}: {reason}{hint}. {folder} is unchanged") from None
    except (HTTPError, OSError) as err:  # no answer at all: DNS, refused connection, timeout, proxy
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise PushError(f"{what}: network error, the Hub could not be reached ({type(err).__name__}: {reason}); "
                        f"check the connection (or HF_ENDPOINT) and run `hftrain push` again. {folder} is unchanged") from None
    return str(getattr(commit, "commit_url", commit))
