"""Model-page data beside a LoRA, read-only: Civitai's model-version JSON and the modelspec fields of the header.

Where it comes from (first found wins):
* `<stem>.civitai.info`: Civitai Helper's copy of Civitai's model-version record.
* `<stem>.json` in Civitai's format (SD.Next's downloader writes it there). A1111's sidecar has the same name but a
  different format; they are told apart by their keys (`is_civitai_format`): a Civitai record has `modelId`, or both
  `trainedWords` and `baseModel`, and none of A1111's own keys (`sd version`, `activation text`, `preferred weight`,
  `negative text`, `notes`). A file with any A1111 key is A1111's sidecar (other keys in it are kept, never read).
* modelspec keys of the safetensors metadata: `modelspec.title`, `description`, `trigger_phrase`, `author`,
  `usage_hint`, `license`.
Neither Civitai file is ever written: the card editor refuses to save into a Civitai-format `<stem>.json`
(`library.sidecars`), so SD.Next keeps its data.

Used for: trigger words (offered as activation text when the sidecar has none), model and version name, base model
(its family fills in an `Unknown` SD version, so the "other SD versions" filter knows it), description (HTML,
sanitised where it is shown), and the model page link; all searchable on the cards.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import asdict, dataclass
from typing import Any

from modules import safe_json
from modules.regular_files import read_regular

from ..formats.family import SdVersion

CIVITAI_INFO_SUFFIX = ".civitai.info"
MAX_COMPANION_JSON_BYTES = 8 * 1024 * 1024
A1111_ONLY_KEYS = ("sd version", "activation text", "preferred weight", "negative text", "notes")
CIVITAI_URL = "https://civitai.com/models/{model}?modelVersionId={version}"
# Civitai's `baseModel` spellings by family (prefix match, case-insensitive); SDXL derivatives count as SDXL.
BASE_MODEL_PREFIXES = (("sdxl", SdVersion.SDXL), ("pony", SdVersion.SDXL), ("illustrious", SdVersion.SDXL),
                       ("noobai", SdVersion.SDXL), ("sd 2", SdVersion.SD2), ("sd 1", SdVersion.SD1))


def read_companion_json(path: str | os.PathLike[str]) -> Any:
    """The JSON value of a companion file through the shared safe reader (`modules.safe_json`: regular files only,
    at most `MAX_COMPANION_JSON_BYTES`, depth and integer caps); ValueError naming the file when it is too large or
    not acceptable JSON, OSError when it cannot be read (FileNotFoundError when it is missing)."""
    try:
        data = read_regular(path, MAX_COMPANION_JSON_BYTES)
    except OSError as exc:
        if exc.errno == errno.EFBIG:
            raise ValueError(f"{os.path.basename(path)}: larger than {MAX_COMPANION_JSON_BYTES // (1024 * 1024)} MB"
                             ) from None
        raise
    try:
        return safe_json.loads(data, MAX_COMPANION_JSON_BYTES)
    except safe_json.JsonError as exc:
        raise ValueError(f"{os.path.basename(path)}: {exc}") from None


def is_civitai_format(data: object) -> bool:
    """True for a Civitai model-version record, False for A1111's sidecar (the rule in the module docstring)."""
    if not isinstance(data, dict) or any(key in data for key in A1111_ONLY_KEYS):
        return False
    return "modelId" in data or ("trainedWords" in data and "baseModel" in data)


def base_model_family(base_model: str) -> SdVersion:
    """The family of a Civitai `baseModel` ("SD 1.5" -> SD1, "SDXL 1.0" / "Pony" -> SDXL); Unknown otherwise."""
    text = base_model.strip().lower()
    return next((family for prefix, family in BASE_MODEL_PREFIXES if text.startswith(prefix)), SdVersion.Unknown)


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def split_words(text: str) -> tuple[str, ...]:
    """Trigger phrases from a comma-separated text, each stripped, empty ones dropped, order kept, no repeats."""
    return tuple(dict.fromkeys(part.strip() for part in re.split(r"[,\n]", text) if part.strip()))


@dataclass(frozen=True)
class ModelInfo:
    """What the model page says about one LoRA (empty strings where it says nothing)."""

    source: str = ""  # "civitai.info", "json" (Civitai format) or "modelspec"
    trigger_words: tuple[str, ...] = ()
    model_name: str = ""
    version_name: str = ""
    base_model: str = ""
    description_html: str = ""  # as the source wrote it (HTML from Civitai); sanitise before showing
    url: str = ""
    author: str = ""
    license: str = ""
    usage_hint: str = ""

    @property
    def family(self) -> SdVersion:
        """The family of `base_model` (Unknown when it names none)."""
        return base_model_family(self.base_model)

    def as_cache(self) -> dict[str, Any]:
        """Plain JSON values for cache.json."""
        return asdict(self)

    @classmethod
    def from_cache(cls, data: dict[str, Any]) -> ModelInfo:
        known = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
        known["trigger_words"] = tuple(known.get("trigger_words") or ())
        return cls(**known)

    @classmethod
    def from_civitai(cls, data: dict[str, Any], source: str) -> ModelInfo:
        """From Civitai's model-version record (`trainedWords`, `name`, `baseModel`, `description`, `model.name`,
        `modelId`, `id`, `creator.username` / `model.creator`)."""
        model = data.get("model") if isinstance(data.get("model"), dict) else {}
        words: list[str] = []
        for item in data.get("trainedWords") or []:
            if isinstance(item, str):
                words.extend(split_words(item))
        url = ""
        model_id, version_id = data.get("modelId"), data.get("id")
        if isinstance(model_id, int) and isinstance(version_id, int):
            url = CIVITAI_URL.format(model=model_id, version=version_id)
        creator = data.get("creator") if isinstance(data.get("creator"), dict) else model.get("creator")
        author = _text(creator.get("username")) if isinstance(creator, dict) else ""
        return cls(source=source, trigger_words=tuple(dict.fromkeys(words)), model_name=_text(model.get("name")),
                   version_name=_text(data.get("name")), base_model=_text(data.get("baseModel")),
                   description_html=_text(data.get("description")) or _text(model.get("description")), url=url,
                   author=author)

    @classmethod
    def from_modelspec(cls, metadata: dict[str, Any]) -> ModelInfo | None:
        """From the header's modelspec keys, or None when it has none of them."""
        def get(key: str) -> str:
            return _text(metadata.get(f"modelspec.{key}"))

        info = cls(source="modelspec", trigger_words=split_words(get("trigger_phrase")), model_name=get("title"),
                   description_html=get("description"), author=get("author"), license=get("license"),
                   usage_hint=get("usage_hint"))
        return info if info != cls(source="modelspec") else None

    def merged_with(self, other: ModelInfo | None) -> ModelInfo:
        """This info with the empty fields filled from `other` (Civitai first, modelspec fills the gaps)."""
        if other is None:
            return self
        values = {key: getattr(self, key) or getattr(other, key) for key in self.__dataclass_fields__}
        values["source"] = self.source
        return ModelInfo(**values)
