"""The registry of LoRA files on disk: scan, names and aliases, metadata, SD version, hashes.

* Roots: the Lora folder, then the LyCORIS folder when it exists; walked recursively, symlinked folders followed
  (each real folder once, so symlink loops end; the walk is bounded in names and seconds), only regular files opened
  (a FIFO named `x.safetensors` is skipped with its reason, never opened blocking),
  natural sort (digit runs compared as numbers, text case-insensitively), `.safetensors`, `.pt`, `.ckpt`.
* Name = file stem. A stem that occurs in two folders keeps the first (in scan order) under the bare stem; every file is
  also reachable by its path relative to its root without extension (`sub/name`), so nothing is hidden. Such a stem
  is *ambiguous*: `candidates(stem)` lists its files (the first is the one the bare stem applies; A1111 silently took
  the last scanned), and `prompt_name(entry)` gives each file a name that reaches that very file (alias, else stem,
  else `sub/stem`): the cards insert it, `GET /sdapi/v1/loras` lists it, a pasted infotext is rewritten to it.
* Alias = `ss_output_name` from the metadata, else the stem. An alias shared by two files is ambiguous: it is not
  registered, and those files are found by their stems (A1111's fix for issue #14655).
* Metadata and derived facts (SD version, algorithm) are cached in cache.json, validated by mtime and size, so a warm
  rescan reads no LoRA file. Hashes (SHA-256 of the safetensors payload, 12-char short hash) are computed on demand
  and cached the same way; a file rewritten since it was hashed is hashed again.
* Files that cannot be used are skipped with the reason in `errors` (keyed by path): unreadable or malformed files,
  folders named like LoRA files, and names that are not valid UTF-8 (they cannot be typed into a prompt nor sent in
  JSON; their key shows the undecodable bytes as U+FFFD). `skipped_reason(name)` finds the reason by prompt name.
  A sidecar `<name>.json` that is malformed or refused by `companion_allowed` is ignored (the LoRA itself is kept)
  and its reason is kept in `errors` under the sidecar's path too (and in the entry's `sidecar_problem`).
* Model-page data (`library.model_info`): `<stem>.civitai.info`, or a Civitai-format `<stem>.json` (then the entry has
  no A1111 user metadata and `sidecar_is_civitai`), read-only and cached in cache.json like the metadata.
* Companion files (preview image, `.txt` description, sidecar JSON) are read, served and written only where
  `library.companion.companion_allowed` says so: the one rule for symlinks, used by the registry, the API and the
  card page.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules import safe_json
from modules.atomic_io import read_json
from modules.cache import DiskCache
from modules.hashes import cache_subsection, file_hash, short_hash
from modules.regular_files import MAX_WALK_ENTRIES, MAX_WALK_SECONDS, WalkStats, check_regular, walk

from ..algorithms.registry import detect_algorithm
from ..formats import files
from ..formats.family import SdVersion
from ..formats.sd_version import detect_sd_version
from .companion import companion_allowed
from .model_info import CIVITAI_INFO_SUFFIX, ModelInfo, is_civitai_format, read_companion_json

log = logging.getLogger(__name__)

METADATA_CACHE = "lora-metadata"
CIVITAI_CACHE = "lora-civitai"
CACHE_VERSION = 4  # 3: badges from the strategies' own recogniser; 4: metadata read through modules.safe_json
PREVIEW_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif")
METADATA_PRIORITY = {"ss_sd_model_name": 1, "ss_resolution": 2, "ss_clip_skip": 3, "ss_num_train_images": 10,
                     "ss_tag_frequency": 20}


def display_path(path: str) -> str:
    """`path` with bytes that are not UTF-8 (surrogate escapes, as Python decodes such file names) shown as U+FFFD."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def natural_sort_key(text: str) -> list[Any]:
    """Split digit runs so that "lora2" sorts before "lora10"; text compares case-insensitively."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


WORD_RE = re.compile(r"[-_\w']+")


def training_tags(metadata: dict[str, Any]) -> list[tuple[str, int]]:
    """Training tags with counts from kohya's `ss_tag_frequency`, most frequent first (ties by tag text).

    Datasets are summed. When the "tags" are really long captions (average length >= 16), their words (3+ letters)
    are counted instead."""
    frequency = metadata.get("ss_tag_frequency")
    if isinstance(frequency, str):
        try:
            frequency = safe_json.loads(frequency)
        except safe_json.JsonError:
            return []
    if not isinstance(frequency, dict):
        return []
    counts: dict[str, int] = {}
    for dataset in frequency.values():
        if not isinstance(dataset, dict):
            continue
        for tag, count in dataset.items():
            tag = str(tag).strip()
            if not tag:
                continue
            try:
                counts[tag] = counts.get(tag, 0) + int(count)
            except (TypeError, ValueError, OverflowError):  # inf, NaN, a list ...
                continue
    if counts and sum(len(tag) for tag in counts) / len(counts) >= 16:
        words: dict[str, int] = {}
        for caption, count in counts.items():
            for word in WORD_RE.findall(caption):
                if len(word) >= 3:
                    words[word] = words.get(word, 0) + count
        counts = words
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def skip_reason(exc: BaseException) -> str:
    """The message listed for a file the scan skipped because of `exc` (any exception: a bug names its type)."""
    if isinstance(exc, files.LoraFileError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"cannot read: {exc.strerror or exc}"
    return f"cannot be read ({type(exc).__name__}: {str(exc)[:300]})"


ALIAS_FORBIDDEN = re.compile(r"[<>:\x00-\x1f\x7f\ud800-\udfff]")


def usable_alias(alias: str) -> bool:
    """True when `alias` can be typed inside `<lora:ALIAS:w>` and read back as the same name."""
    return alias == alias.strip() and len(alias) <= 255 and ALIAS_FORBIDDEN.search(alias) is None


def usable_cache_entry(cached: Any) -> bool:
    """True when a cache.json metadata entry has this version's shape (anything else is made afresh)."""
    return (isinstance(cached, dict) and cached.get("version") == CACHE_VERSION
            and isinstance(cached.get("metadata"), dict) and isinstance(cached.get("algorithm"), str)
            and isinstance(cached.get("sd_version"), str))


def prompt_name(entry: NetworkOnDisk, preferred: str, forbidden_aliases: set[str]) -> str:
    """The name A1111's `get_alias` would write for `entry`: the alias from the file, unless the `preferred` setting
    is "Filename" or the alias is ambiguous, then the stem. It may name another file when the stem is ambiguous:
    use `NetworkRegistry.prompt_name`, which never does."""
    if preferred == "Filename" or entry.alias.lower() in forbidden_aliases:
        return entry.name
    return entry.alias


@dataclass
class NetworkOnDisk:
    """One LoRA file: names, metadata, SD version, algorithm, hash (lazy), sidecar user metadata.

    `sidecar_problem` says why the sidecar was ignored at the last scan (malformed, or refused by
    `companion_allowed`); None when it was read or there is none."""

    name: str
    filename: str
    root: str
    metadata: dict[str, Any] = field(default_factory=dict)
    sd_version: SdVersion = SdVersion.Unknown
    algorithm: str = "Unknown"
    hash: str = ""
    mtime: float = 0.0
    size: int = 0
    user_metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    sidecar_problem: str | None = None
    civitai: ModelInfo | None = None
    sidecar_is_civitai: bool = False
    hasher: Callable[[NetworkOnDisk], str] | None = field(default=None, repr=False, compare=False)

    def read_hash(self) -> str:
        """The full hash, computed and cached on first use by the registry that listed this file (A1111's name)."""
        return self.hasher(self) if self.hasher is not None else self.hash

    @property
    def alias(self) -> str:
        """`ss_output_name`, unless it is not a string usable inside a tag (holds `<`, `>`, `:`, a control
        character, or surrounding spaces): then the stem, so a clicked card always inserts a tag that resolves."""
        alias = self.metadata.get("ss_output_name")
        if not isinstance(alias, str) or not alias or not usable_alias(alias):
            return self.name
        return alias

    @property
    def shorthash(self) -> str:
        return short_hash(self.hash) if self.hash else ""

    @functools.cached_property
    def relative_name(self) -> str:
        """Path relative to its root without extension, with `/` separators (`sub/name`)."""
        rel = self.filename[len(self.root) + 1:] if self.filename.startswith(self.root + os.sep) else \
            os.path.relpath(self.filename, self.root)
        return os.path.splitext(rel)[0].replace(os.sep, "/")

    @property
    def version(self) -> files.FileVersion:
        """The file version the registry last saw (path, mtime, size): the key of per-file caches."""
        return files.FileVersion(self.filename, self.mtime, self.size)

    @property
    def is_safetensors(self) -> bool:
        return self.filename.lower().endswith(".safetensors")

    @property
    def effective_sd_version(self) -> SdVersion:
        """The user's `sd version` from the sidecar JSON, else the detected one, else the model page's base model."""
        version = SdVersion.parse(self.user_metadata.get("sd version")) or self.sd_version
        if version == SdVersion.Unknown and self.civitai is not None:
            return self.civitai.family
        return version

    @property
    def model_info(self) -> ModelInfo | None:
        """Civitai's data (`.civitai.info` / Civitai-format `.json`), gaps filled from the header's modelspec."""
        modelspec = ModelInfo.from_modelspec(self.metadata)
        return self.civitai.merged_with(modelspec) if self.civitai is not None else modelspec

    @property
    def activation_text(self) -> str:
        """The sidecar's `activation text`, else the model page's trigger words (comma-separated)."""
        text = str(self.user_metadata.get("activation text") or "").strip()
        if text:
            return text
        info = self.model_info
        return ", ".join(info.trigger_words) if info is not None else ""

    def civitai_info_path(self) -> Path:
        return Path(os.path.splitext(self.filename)[0] + CIVITAI_INFO_SUFFIX)

    def sidecar_path(self) -> Path:
        return Path(os.path.splitext(self.filename)[0] + ".json")

    def preview_path(self) -> Path | None:
        """The preview image next to the file: `<name>.png|jpg|jpeg|webp|gif`, then `<name>.preview.*`."""
        base = os.path.splitext(self.filename)[0]
        for pattern in ("{}{}", "{}.preview{}"):
            for ext in PREVIEW_EXTENSIONS:
                candidate = Path(pattern.format(base, ext))
                try:
                    if candidate.is_file():
                        return candidate
                except OSError:  # e.g. a name over the length limit: no such preview
                    continue
        return None


class NetworkRegistry:
    """Every LoRA file under the roots; thread-safe rescans."""

    def __init__(self, roots: Iterable[Path], cache: DiskCache | None, hashing: bool = True,
                 max_entries: int = MAX_WALK_ENTRIES, max_seconds: float = MAX_WALK_SECONDS) -> None:
        self.roots = [Path(r) for r in roots]
        self.max_entries, self.max_seconds = max_entries, max_seconds  # the scan's bounds (see `_walk`)
        self.cache = cache
        self.hashing = hashing
        self.available: dict[str, NetworkOnDisk] = {}  # stem and relative name -> entry
        self.aliases: dict[str, NetworkOnDisk] = {}  # stem, relative name and unambiguous aliases -> entry
        self.forbidden_aliases: set[str] = set()
        self.ambiguous: dict[str, list[NetworkOnDisk]] = {}  # stem or alias of several files -> them, in scan order
        self.hash_lookup: dict[str, NetworkOnDisk] = {}  # short hash -> entry
        self.errors: dict[str, str] = {}  # file -> why it was skipped (or, for a sidecar, ignored)
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- scanning
    def _walk(self) -> list[tuple[str, str, frozenset[str]]]:
        """(root, file path, names in its folder) for every LoRA file, in scan order. Folder symlinks are followed,
        each real folder once (`modules.regular_files.walk`: visited (device, inode) set, entry and time bounds);
        names that are not regular files (FIFOs, devices) are skipped by `_describe` with the reason."""
        found: list[tuple[str, str, frozenset[str]]] = []
        for root in self.roots:
            if not root.is_dir():
                continue
            stats = WalkStats()
            for dirpath, dirnames, filenames in walk(root, natural_sort_key, self.max_entries, self.max_seconds,
                                                     stats):
                listing = frozenset(filenames)
                for fname in filenames:
                    if fname.lower().endswith(files.LORA_EXTENSIONS):
                        filename = os.path.join(dirpath, fname)
                        try:
                            filename[len(str(root)):].encode("utf-8")
                        except UnicodeEncodeError:
                            self.errors[display_path(filename)] = "file name is not valid UTF-8: rename the file"
                            continue
                        found.append((str(root), filename, listing))
                for dname in list(dirnames):  # a folder named like a LoRA file is skipped, not walked into as one
                    if dname.lower().endswith(files.LORA_EXTENSIONS):
                        self.errors[display_path(os.path.join(dirpath, dname))] = "is a directory, not a LoRA file"
            if stats.truncated:
                self.errors[str(root)] = f"scan {stats.truncated}: files beyond that are not listed"
        return found

    def _describe(self, root: str, filename: str, listing: frozenset[str] | None = None) -> NetworkOnDisk:
        st = check_regular(filename)  # raises for broken symlinks, FIFOs, devices
        entry = NetworkOnDisk(name=Path(filename).stem, filename=filename, root=root, mtime=st.st_mtime, size=st.st_size,
                              hasher=self.read_hash)
        signature = (st.st_mtime, st.st_size)
        cached = self.cache.get(METADATA_CACHE, filename, signature) if self.cache is not None else None
        if usable_cache_entry(cached):
            entry.metadata, entry.algorithm = cached["metadata"], cached["algorithm"]
            entry.sd_version = SdVersion.parse(cached["sd_version"]) or SdVersion.Unknown
        else:
            if cached is not None and self.cache is not None:  # an old version or a poisoned entry: made afresh
                self.cache.drop(METADATA_CACHE, filename)
            if entry.is_safetensors:
                header = files.read_safetensors_header(filename)
                entry.metadata = files.decode_metadata(header.get("__metadata__") or {})
                shapes = {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
            else:
                shapes = {}
            entry.metadata = dict(sorted(entry.metadata.items(), key=lambda kv: METADATA_PRIORITY.get(kv[0], 999)))
            entry.sd_version = detect_sd_version(entry.metadata, shapes)
            entry.algorithm = detect_algorithm(shapes, entry.metadata) if shapes else "Unknown"
            if self.cache is not None:
                self.cache.set(METADATA_CACHE, filename, {"version": CACHE_VERSION, "metadata": entry.metadata,
                                                          "sd_version": entry.sd_version, "algorithm": entry.algorithm},
                               save=False)
        if self.cache is not None:  # the subsection `file_hash` writes this file's hash into
            cached_hash = self.cache.get(cache_subsection(whole_file=not entry.is_safetensors), filename, signature)
            if isinstance(cached_hash, str):
                entry.hash = cached_hash
        sidecar = entry.sidecar_path()
        if (sidecar.name in listing) if listing is not None else (sidecar.is_file() or sidecar.is_symlink()):
            if not companion_allowed(sidecar, filename, self.roots):
                entry.sidecar_problem = ("sidecar ignored: it is a symlink to outside the Lora folders and not beside "
                                         "the LoRA file")
            else:
                try:
                    data = read_json(sidecar, default={})
                except Exception as exc:  # any problem of the sidecar leaves the LoRA usable
                    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                    entry.sidecar_problem = f"sidecar ignored: {reason}"
                else:
                    if is_civitai_format(data):
                        entry.sidecar_is_civitai = True
                        entry.civitai = ModelInfo.from_civitai(data, "json")
                    elif isinstance(data, dict):
                        entry.user_metadata = data
                    else:
                        entry.sidecar_problem = "sidecar ignored: expected a JSON object"
            if entry.sidecar_problem:
                log.warning("Lora %s: %s", sidecar, entry.sidecar_problem)
        info_path = entry.civitai_info_path()
        if (info_path.name in listing) if listing is not None else info_path.is_file():
            civitai = self._civitai_info(info_path, filename)
            if civitai is not None:
                entry.civitai = civitai
        return entry

    def _civitai_info(self, path: Path, lora_filename: str) -> ModelInfo | None:
        """`<stem>.civitai.info`, read (cached by mtime and size) when the companion rule allows; None otherwise."""
        if not companion_allowed(path, lora_filename, self.roots):
            log.warning("Lora %s ignored: it lies outside the Lora folders and not beside the LoRA file", path)
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        signature = (st.st_mtime, st.st_size)
        cached = self.cache.get(CIVITAI_CACHE, str(path), signature) if self.cache is not None else None
        if isinstance(cached, dict):
            return ModelInfo.from_cache(cached)
        try:
            data = read_companion_json(path)
        except (ValueError, OSError) as exc:
            log.warning("Lora %s ignored: %s", path, exc)
            return None
        if not isinstance(data, dict):
            log.warning("Lora %s ignored: expected a JSON object", path)
            return None
        info = ModelInfo.from_civitai(data, "civitai.info")
        if self.cache is not None:
            self.cache.set(CIVITAI_CACHE, str(path), info.as_cache(), save=False)
        return info

    def refresh(self) -> None:
        """Full rescan. It never fails as a whole: a file that cannot be read, whatever the exception, is skipped
        with the reason in `errors` (and the log); cache entries of files no longer found are pruned."""
        with self._lock:
            self.errors = {}
            entries: list[NetworkOnDisk] = []
            for root, filename, listing in self._walk():
                try:
                    entry = self._describe(root, filename, listing)
                    entries.append(entry)
                    if entry.sidecar_problem:
                        self.errors[display_path(str(entry.sidecar_path()))] = entry.sidecar_problem
                except Exception as exc:  # one bad file never disables the others
                    self.errors[filename] = skip_reason(exc)
                    if isinstance(exc, (OSError, files.LoraFileError)):
                        log.warning("Lora file skipped: %s: %s", filename, self.errors[filename])
                    else:
                        log.warning("Lora file skipped: %s: %s", filename, self.errors[filename], exc_info=exc)
            self._index(entries)
            if self.cache is not None:
                self._prune_cache({entry.filename for entry in entries})
                self.cache.save()

    def _prune_cache(self, present: set[str]) -> None:
        """Drop the metadata and hash cache entries of files under the roots that this scan did not find."""
        assert self.cache is not None
        roots = [os.path.abspath(root) + os.sep for root in self.roots]
        present = {os.path.abspath(name) for name in present}

        def stale(key: str) -> bool:
            return key.lower().endswith(files.LORA_EXTENSIONS) and key.startswith(tuple(roots)) and key not in present

        for subsection in (METADATA_CACHE, cache_subsection(whole_file=False), cache_subsection(whole_file=True)):
            self.cache.prune(subsection, stale)

    def _index(self, entries: list[NetworkOnDisk]) -> None:
        available: dict[str, NetworkOnDisk] = {}
        for entry in entries:
            available.setdefault(entry.relative_name, entry)
        for entry in entries:
            if entry.name in available and available[entry.name] is not entry:
                log.warning("Lora name %r is used by several files; %s is reachable as %r", entry.name,
                            entry.filename, entry.relative_name)
            available.setdefault(entry.name, entry)
        alias_count: dict[str, int] = {}
        for entry in entries:
            alias_count[entry.alias.lower()] = alias_count.get(entry.alias.lower(), 0) + 1
        forbidden = {alias for alias, count in alias_count.items() if count > 1} | {"none"}
        aliases = dict(available)
        for entry in entries:
            if entry.alias.lower() not in forbidden:
                aliases.setdefault(entry.alias, entry)
        by_stem: dict[str, list[NetworkOnDisk]] = {}
        for entry in entries:
            by_stem.setdefault(entry.name, []).append(entry)
        ambiguous = {stem: found for stem, found in by_stem.items() if len(found) > 1}
        by_alias: dict[str, list[NetworkOnDisk]] = {}
        for entry in entries:
            by_alias.setdefault(entry.alias.lower(), []).append(entry)
        for entry in entries:  # an alias shared by several files names none of them: list them all
            if entry.alias.lower() in forbidden and entry.alias != entry.name:
                ambiguous.setdefault(entry.alias, by_alias[entry.alias.lower()])
        self.available, self.aliases, self.forbidden_aliases = available, aliases, forbidden
        self.ambiguous = ambiguous
        self.hash_lookup = {entry.shorthash: entry for entry in entries if entry.hash}

    def entries(self) -> list[NetworkOnDisk]:
        """Each file once, in scan order."""
        seen: dict[int, NetworkOnDisk] = {}
        for entry in self.available.values():
            seen.setdefault(id(entry), entry)
        return sorted(seen.values(), key=lambda e: (natural_sort_key(e.root), natural_sort_key(e.relative_name)))

    # ---------------------------------------------------------------- lookups
    def find(self, name: str) -> NetworkOnDisk | None:
        """Entry for a prompt name: stem, `sub/stem`, or an unambiguous alias (stems win over aliases)."""
        with self._lock:
            return self.available.get(name) or self.aliases.get(name)

    def prompt_name(self, entry: NetworkOnDisk, preferred: str = "Alias from file") -> str:
        """The name to write into a prompt for `entry`: its alias (unless `preferred` is "Filename"), else its stem,
        else its `sub/stem` path; the first that `find` resolves to this very file and that no other file shares
        (a stem in two folders gives both files their `sub/stem`, so a prompt always says which one it means)."""
        with self._lock:
            names = [entry.alias] if preferred != "Filename" else []
            for name in (*names, entry.name):
                if name not in self.ambiguous and self.find(name) is entry:
                    return name
            return entry.relative_name

    def candidates(self, name: str) -> list[NetworkOnDisk]:
        """The files a stem or alias shared by several files could mean (scan order; `find(name)` is the first for a
        stem, none for an alias); [] when `name` is not ambiguous."""
        with self._lock:
            return list(self.ambiguous.get(name, ()))

    def ambiguity_message(self, name: str) -> str | None:
        """A one-line notice for a prompt tag naming an ambiguous stem or alias, or None."""
        found = self.candidates(name)
        if not found:
            return None
        chosen = self.find(name)
        listed = ", ".join(f"{e.relative_name}{' (used)' if e is chosen else ''}" for e in found)
        if chosen is None:
            return f"{name!r} is the alias of {len(found)} files ({listed}); none is used: write one of their paths"
        return (f"{name!r} names {len(found)} files: {listed}; the first in path order is used, write the path "
                "(<lora:sub/name:...>) for another")

    def skipped_reason(self, name: str) -> str | None:
        """Why the last scan skipped the file a prompt calls `name` (its stem or `sub/stem`), or None."""
        with self._lock:
            errors = dict(self.errors)
        for filename, reason in errors.items():
            if not filename.lower().endswith(files.LORA_EXTENSIONS):  # an ignored sidecar, not a skipped LoRA
                continue
            root = next((str(r) for r in self.roots if filename.startswith(str(r) + os.sep)), os.path.dirname(filename))
            relative = os.path.splitext(os.path.relpath(filename, root))[0].replace(os.sep, "/")
            base = os.path.basename(filename)
            if name in (relative, os.path.splitext(base)[0]):
                return reason if reason.startswith(base) else f"{base}: {reason}"
        return None

    def read_hash(self, entry: NetworkOnDisk) -> str:
        """The entry's full hash, computed and cached on first use ('' with hashing off), and again when the file
        changed (mtime or size) since the entry was made or last hashed."""
        if not self.hashing:
            return entry.hash
        try:
            st = os.stat(entry.filename)
        except OSError:
            return entry.hash
        if entry.hash and (st.st_mtime, st.st_size) == (entry.mtime, entry.size):
            return entry.hash
        with self._lock:
            if entry.hash and self.hash_lookup.get(entry.shorthash) is entry:
                del self.hash_lookup[entry.shorthash]
        entry.mtime, entry.size = st.st_mtime, st.st_size
        entry.hash = file_hash(entry.filename, self.cache)
        with self._lock:
            self.hash_lookup[entry.shorthash] = entry
        if self.cache is not None:
            self.cache.save()
        return entry.hash

    def find_by_short_hash(self, shorthash: str, name: str | None = None) -> NetworkOnDisk | None:
        """The file with this short hash. Hashes are computed on demand, so with `name` (the name the hash was
        recorded for) the files that name could mean (its candidates, or the file it finds) are hashed first if
        they are not yet: pasting an infotext then finds the right one of two same-named files."""
        wanted = shorthash.strip().lower()[:12]
        found = self.hash_lookup.get(wanted)
        if found is not None or not name or not self.hashing:
            return found
        maybe = self.candidates(name) or [e for e in (self.find(name),) if e is not None]
        for entry in maybe:
            if not entry.hash:
                self.read_hash(entry)
        return self.hash_lookup.get(wanted)
