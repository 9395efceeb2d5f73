"""Finding the files of a checkpoint: a local folder, or a repository id on the Hub.

Every ``from_pretrained`` (configs, tokenizers, models in each framework) goes through
:func:`cached_file`, so folders and Hub ids behave the same everywhere.
"""

from __future__ import annotations

import os
import re
from typing import Optional

# Options every from_pretrained accepts and forwards here; anything else belongs to the caller.
HUB_KWARGS = (
    "cache_dir",
    "revision",
    "local_files_only",
    "token",
    "force_download",
    "proxies",
    "subfolder",
    "use_auth_token",
    "resume_download",
)


def pop_hub_kwargs(kwargs: dict) -> dict:
    """Remove and return the Hub options from a ``from_pretrained`` keyword dict."""
    hub = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
    if "use_auth_token" in hub:  # the older name of ``token``
        hub.setdefault("token", hub.pop("use_auth_token"))
    hub.pop("resume_download", None)  # downloads always resume now; accepted for compatibility
    return hub


_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


def _looks_like_path(name: str) -> bool:
    """A Hub id is ``name`` or ``owner/name``; anything else can only have meant a folder."""
    return not _REPO_ID.match(name) or ".." in name


def _snapshot_is_cached(repo_id: str, revision: Optional[str], cache_dir) -> bool:
    from huggingface_hub import constants

    repo = os.path.join(os.fspath(cache_dir or constants.HF_HUB_CACHE), "models--" + repo_id.replace("/", "--"))
    revision = revision or "main"
    return os.path.isfile(os.path.join(repo, "refs", revision)) or os.path.isdir(os.path.join(repo, "snapshots", revision))


def cached_file(
    path_or_repo_id: str | os.PathLike,
    filename: str,
    *,
    cache_dir: Optional[str | os.PathLike] = None,
    revision: Optional[str] = None,
    local_files_only: bool = False,
    token: Optional[str | bool] = None,
    force_download: bool = False,
    proxies: Optional[dict] = None,
    subfolder: str = "",
    missing_ok: bool = False,
) -> Optional[str]:
    """Return the local path of ``filename`` in a folder or Hub repository.

    A file that the checkpoint simply does not have gives ``None`` when ``missing_ok`` is set and an
    ``OSError`` naming the checkpoint and the file otherwise. Network trouble and unknown repositories
    always raise ``OSError`` with the id, since guessing would hide the real problem.
    """
    name = os.fspath(path_or_repo_id)
    if os.path.isdir(name):
        path = os.path.join(name, subfolder, filename)
        if os.path.isfile(path):
            return path
        if missing_ok:
            return None
        raise OSError(f"{name!r} is a folder but has no file {os.path.join(subfolder, filename)!r}")
    if os.path.isfile(name):
        raise OSError(f"expected a checkpoint folder or a Hub repository id, got the file {name!r}")
    if _looks_like_path(name):
        raise OSError(f"no such checkpoint folder: {name!r}")

    import huggingface_hub
    from huggingface_hub import errors as hub_errors

    if os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE"):
        local_files_only = True
    try:
        return huggingface_hub.hf_hub_download(
            name,
            filename,
            subfolder=subfolder or None,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
            force_download=force_download,
            proxies=proxies,
        )
    except hub_errors.RepositoryNotFoundError as err:
        raise OSError(
            f"{name!r} is neither a local folder nor a repository on the Hub (or it is private and no "
            "token was given)"
        ) from err
    except hub_errors.RevisionNotFoundError as err:
        raise OSError(f"revision {revision!r} does not exist for {name!r}") from err
    except hub_errors.LocalEntryNotFoundError as err:
        # Checked before EntryNotFoundError, its base class in recent huggingface_hub releases. Raised both for local_files_only and when the Hub cannot be reached. An optional file that a
        # cached snapshot lacks is simply absent; a repository that was never cached is an error.
        if missing_ok and _snapshot_is_cached(name, revision, cache_dir):
            return None
        how = "local_files_only=True" if local_files_only else "the Hub could not be reached"
        raise OSError(
            f"cannot find {filename!r} of {name!r}: it is not in the local cache and {how}. "
            "Pass a local folder holding the checkpoint, or go online."
        ) from err
    except hub_errors.EntryNotFoundError as err:
        if missing_ok:
            return None
        raise OSError(f"{name!r} has no file {filename!r} (revision {revision or 'main'})") from err
    except hub_errors.HfHubHTTPError as err:
        raise OSError(f"cannot download {filename!r} of {name!r}: {err}") from err


def push_folder(folder: str, repo_id: Optional[str] = None, token=None, commit_message: Optional[str] = None,
                private: Optional[bool] = None, **_ignored) -> None:
    """Upload a saved folder to the Hub (``push_to_hub=True`` of every ``save_pretrained``).

    The repository defaults to the folder's name, as in the reference.
    """
    from huggingface_hub import HfApi

    repo_id = repo_id or os.path.basename(os.path.normpath(folder))
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message or "Upload with polyformers")
