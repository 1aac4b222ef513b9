"""What the Lora card's metadata popup and edit dialog show, and what their buttons do on the server.

* `training_tags(metadata)`: the training tags with counts (A1111's `build_tags`: counts of `ss_tag_frequency`
  summed over datasets; caption-style datasets, average tag length >= 16, are re-counted by words).
* `training_summary(entry)`: readable rows (network module, base model, resolution buckets, dataset size, dates...).
* `metadata_popup_html(entry)`: the popup body: summary table, top tags with counts, the full metadata (flattened),
  and a placeholder the browser fills with the per-block strength chart. Every value is escaped.
* `editor_payload(entry, ...)`: the edit dialog's data (the six sidecar fields, tags, file table).
* `model_page_rows(entry)` / `model_page_html(entry)`: Civitai and modelspec data (`library.model_info`): trigger
  words, model and version, base model, author, license, the model page link and the description, HTML sanitised by
  bleach (a short allow-list of formatting tags; links only to http(s), opened with rel=noopener).
* `replace_preview(entry, image)`: write the image the user selected in the gallery as `<name>.png`.
Saving goes through `user_metadata.save_user_metadata` (validation, unknown keys kept, atomic UTF-8 write).
"""

from __future__ import annotations

import datetime
import html
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import bleach
from PIL import Image, UnidentifiedImageError

from modules import safe_json
from modules.atomic_io import write_bytes_atomic

from ..library.registry import NetworkOnDisk, training_tags
from ..library.sidecars import EDITABLE_KEYS

TOP_TAGS = 24
HIDDEN_METADATA = ("ssmd_cover_images",)
ALLOWED_TAGS = frozenset({"p", "br", "b", "strong", "i", "em", "u", "s", "ul", "ol", "li", "a", "h1", "h2", "h3",
                          "h4", "code", "pre", "blockquote", "hr", "span"})
ALLOWED_ATTRIBUTES = {"a": ["href", "title", "rel", "target"]}
MAX_PREVIEW_BYTES = 50 * 1024 * 1024


def sanitize_html(text: str) -> str:
    """Model-page HTML made safe to show: allowed formatting tags kept, everything else escaped (scripts, styles,
    event handlers, images), links only to http(s) and opened in a new tab with rel=noopener."""
    cleaned = bleach.clean(_drop_code(text), tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES, protocols=["http", "https"],
                           strip=True, strip_comments=True)
    return bleach.linkify(cleaned, callbacks=[_external_link], parse_email=False)


CODE_BLOCKS = re.compile(r"<(script|style|template|iframe|object)\b.*?(</\1\s*>|$)", re.IGNORECASE | re.DOTALL)


def _drop_code(text: str) -> str:
    """`text` without script/style/template/iframe/object elements and their content (bleach keeps the content of a
    stripped tag as text, which would show a script's source)."""
    return CODE_BLOCKS.sub("", text)


def _external_link(attrs: dict, new: bool = False) -> dict:
    attrs[(None, "target")] = "_blank"
    attrs[(None, "rel")] = "noopener noreferrer nofollow"
    return attrs


def html_to_text(text: str) -> str:
    """Plain text of model-page HTML (for cards and search): tags dropped, entities decoded, blank runs folded."""
    if "<" not in text and "&" not in text:
        return text.strip()
    spaced = text.replace("<br", "\n<br").replace("</p>", "</p>\n").replace("</li>", "</li>\n")
    plain = html.unescape(bleach.clean(_drop_code(spaced), tags=set(), strip=True, strip_comments=True))
    lines = [" ".join(line.split()) for line in plain.splitlines()]
    return "\n".join(line for line in lines if line)


def _json_field(metadata: dict[str, Any], key: str) -> Any:
    value = metadata.get(key)
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return safe_json.loads(value)
        except safe_json.JsonError:
            return value
    return value


def _utc(value: Any) -> str:
    try:
        stamp = float(value)
    except (TypeError, ValueError):
        return ""
    if not (0 < stamp < 1e11):
        return ""
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def resolution_buckets(metadata: dict[str, Any]) -> list[tuple[str, int]]:
    """`W x H` -> image count from `ss_bucket_info`, largest first."""
    info = _json_field(metadata, "ss_bucket_info")
    buckets = info.get("buckets") if isinstance(info, dict) else None
    if not isinstance(buckets, dict):
        return []
    counts: dict[str, int] = {}
    for bucket in buckets.values():
        if not isinstance(bucket, dict):
            continue
        resolution = bucket.get("resolution")
        if isinstance(resolution, (list, tuple)) and len(resolution) == 2:
            label = f"{resolution[0]}x{resolution[1]}"
            try:
                counts[label] = counts.get(label, 0) + int(bucket.get("count", 0))
            except (TypeError, ValueError):
                continue
    return sorted(counts.items(), key=lambda item: -item[1])


def dataset_size(metadata: dict[str, Any]) -> int | None:
    """Images in the training set: the sum of `ss_dataset_dirs[*].img_count`, else `ss_num_train_images`."""
    dirs = _json_field(metadata, "ss_dataset_dirs")
    if isinstance(dirs, dict) and dirs:
        try:
            return sum(int(d.get("img_count", 0)) for d in dirs.values() if isinstance(d, dict))
        except (TypeError, ValueError):
            pass
    try:
        return int(metadata["ss_num_train_images"])
    except (KeyError, TypeError, ValueError):
        return None


def _size(num: int) -> str:
    value = float(num)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{num} B"


def file_rows(entry: NetworkOnDisk) -> list[tuple[str, str]]:
    """The file facts shown in the popup and the editor."""
    return [
        ("File", os.path.relpath(entry.filename, entry.root).replace(os.sep, "/")),
        ("Size", _size(entry.size)),
        ("Modified", _utc(entry.mtime)),
        ("Hash", entry.shorthash or "(not computed yet)"),
        ("SD version", entry.effective_sd_version),
        ("Algorithm", entry.algorithm),
    ]


def training_summary(entry: NetworkOnDisk) -> list[tuple[str, str]]:
    """Readable rows of the training metadata (only those the file has)."""
    meta = entry.metadata
    rows: list[tuple[str, str]] = []

    def add(label: str, value: Any) -> None:
        if value not in (None, "", "None"):
            rows.append((label, str(value)))

    add("Output name", meta.get("ss_output_name"))
    add("Title", meta.get("modelspec.title"))
    add("Network module", meta.get("ss_network_module"))
    dim, alpha = meta.get("ss_network_dim"), meta.get("ss_network_alpha")
    if dim or alpha:
        add("Rank / alpha", f"{dim or '?'} / {alpha or '?'}")
    add("Base model", meta.get("ss_sd_model_name"))
    add("Base model version", meta.get("ss_base_model_version") or meta.get("modelspec.architecture"))
    add("Clip skip", meta.get("ss_clip_skip"))
    buckets = resolution_buckets(meta)
    if buckets:
        shown = ", ".join(f"{res} ({count})" for res, count in buckets[:6])
        add("Resolution buckets", shown + (", ..." if len(buckets) > 6 else ""))
    else:
        add("Resolution", meta.get("ss_resolution"))
    add("Dataset size", dataset_size(meta))
    add("Epochs", meta.get("ss_num_epochs"))
    add("Steps", meta.get("ss_max_train_steps") or meta.get("ss_steps"))
    add("Learning rate", meta.get("ss_learning_rate"))
    add("Training started", _utc(meta.get("ss_training_started_at")))
    add("Training finished", _utc(meta.get("ss_training_finished_at")))
    add("Date", meta.get("modelspec.date"))
    return rows


def flatten_metadata(metadata: dict[str, Any]) -> list[tuple[str, str]]:
    """Every metadata key as text (nested JSON flattened to `a/b/c`; cover images left out; long values cut)."""
    rows: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, str) and value[:1] in "[{":
            try:
                value = safe_json.loads(value)
            except safe_json.JsonError:
                pass
        if isinstance(value, dict) and value and len(rows) < 2000:
            for key, inner in value.items():
                walk(f"{prefix}/{key}", inner)
            return
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        rows.append((prefix, text if len(text) <= 2000 else text[:2000] + " ..."))

    for key, value in metadata.items():
        if key in HIDDEN_METADATA:
            continue
        if key == "ss_tag_frequency":
            rows.append((key, f"{len(training_tags(metadata))} tags (see Training tags)"))
            continue
        walk(key.replace("modelspec.", "modelspec/", 1), value)
    return rows


def table_html(rows: list[tuple[str, str]], css_class: str) -> str:
    """A two-column table; every cell escaped."""
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table class='{css_class}'><tbody>{body}</tbody></table>"


def tags_html(tags: list[tuple[str, int]], limit: int = TOP_TAGS) -> str:
    """The top training tags with counts as (non-interactive in the popup) chips."""
    if not tags:
        return "<p class='lora-muted'>No training tags in this file.</p>"
    chips = "".join(
        f"<span class='lora-tag' data-tag='{html.escape(tag, quote=True)}'>{html.escape(tag)}"
        f"<span class='lora-tag-count'>{count}</span></span>"
        for tag, count in tags[:limit]
    )
    more = f"<p class='lora-muted'>{len(tags) - limit} more tags not shown.</p>" if len(tags) > limit else ""
    return f"<div class='lora-tags'>{chips}</div>{more}"


def model_page_rows(entry: NetworkOnDisk) -> list[tuple[str, str]]:
    """The model page's facts as rows (only those it has)."""
    info = entry.model_info
    if info is None:
        return []
    source = {"civitai.info": f"{entry.civitai_info_path().name} (Civitai)",
              "json": f"{entry.sidecar_path().name} (Civitai format, read-only)",
              "modelspec": "modelspec keys in the file"}.get(info.source, info.source)
    rows = [("Trigger words", ", ".join(info.trigger_words)), ("Model", info.model_name),
            ("Version", info.version_name), ("Base model", info.base_model), ("Author", info.author),
            ("License", info.license), ("Usage hint", info.usage_hint), ("From", source)]
    return [(label, value) for label, value in rows if value]


def model_page_html(entry: NetworkOnDisk) -> str:
    """The popup's "Model page" section: rows, link, sanitised description ('' when there is no model page data)."""
    info = entry.model_info
    if info is None:
        return ""
    parts = ["<h3>Model page</h3>", table_html(model_page_rows(entry), "lora-meta-table lora-model-page")]
    if info.url:
        parts.append(f"<p><a class='lora-model-link' href='{html.escape(info.url, quote=True)}' target='_blank' "
                     f"rel='noopener noreferrer nofollow'>{html.escape(info.url)}</a></p>")
    if info.description_html:
        parts.append(f"<div class='lora-model-description'>{sanitize_html(info.description_html)}</div>")
    return "".join(parts)


def metadata_popup_html(entry: NetworkOnDisk) -> str:
    """The metadata popup body for one card; the block chart goes into `.lora-blocks-slot` (filled by the page)."""
    parts = [f"<h2 class='lora-popup-title'>{html.escape(entry.name)}</h2>"]
    summary = training_summary(entry)
    parts.append(model_page_html(entry))
    parts.append("<h3>File</h3>" + table_html(file_rows(entry), "lora-meta-table"))
    if summary:
        parts.append("<h3>Training</h3>" + table_html(summary, "lora-meta-table"))
    parts.append("<h3>Training tags</h3>" + tags_html(training_tags(entry.metadata)))
    parts.append("<h3>Where it acts</h3><div class='lora-blocks-slot'><p class='lora-muted'>Computing...</p></div>")
    full = flatten_metadata(entry.metadata)
    if full:
        parts.append(f"<details class='lora-meta-all'><summary>All metadata ({len(full)} keys)</summary>"
                     + table_html(full, "lora-meta-table lora-meta-raw") + "</details>")
    else:
        parts.append("<p class='lora-muted'>This file has no training metadata.</p>")
    return "<div class='lora-meta'>" + "".join(parts) + "</div>"


def editable_fields(entry: NetworkOnDisk, description: str) -> dict[str, Any]:
    """The six sidecar fields as the dialog shows them (description as the card shows it)."""
    user = entry.user_metadata
    fields: dict[str, Any] = {key: user.get(key, "") for key in EDITABLE_KEYS}
    fields["description"] = description
    fields["sd version"] = user.get("sd version") or entry.effective_sd_version
    try:
        fields["preferred weight"] = float(user.get("preferred weight") or 0)
    except (TypeError, ValueError):
        fields["preferred weight"] = 0.0
    for key in ("activation text", "negative text", "notes"):
        fields[key] = str(fields[key] or "")
    return fields


def replace_preview(entry: NetworkOnDisk, image: bytes) -> Path:
    """Write `image` (the gallery image the user selected: PNG, JPEG or WebP bytes) as `<name>.png` beside the LoRA,
    atomically; a PNG is kept byte for byte (with its infotext), other formats are converted. ValueError when the
    bytes are not an image."""
    if len(image) > MAX_PREVIEW_BYTES:
        raise ValueError(f"the image is larger than {MAX_PREVIEW_BYTES // (1024 * 1024)} MB")
    try:
        with Image.open(io.BytesIO(image)) as opened:
            opened.verify()
        if not image.startswith(b"\x89PNG"):
            with Image.open(io.BytesIO(image)) as opened:
                out = io.BytesIO()
                opened.convert("RGBA" if "A" in opened.getbands() else "RGB").save(out, format="PNG")
                image = out.getvalue()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not an image: {exc}") from exc
    target = Path(os.path.splitext(entry.filename)[0] + ".png")
    write_bytes_atomic(target, image)
    return target


def editor_payload(entry: NetworkOnDisk, description: str, preview_url: str) -> dict[str, Any]:
    """The edit dialog's data: fields, training tags (top 24), the model page's trigger words, file table HTML, the
    card's preview URL ('' without one), and whether the sidecar is read-only (Civitai's format)."""
    info = entry.model_info
    return {
        "name": entry.name,
        "fields": editable_fields(entry, description),
        "tags": training_tags(entry.metadata)[:TOP_TAGS],
        "trigger_words": list(info.trigger_words) if info is not None else [],
        "info_html": table_html(file_rows(entry) + training_summary(entry)[:6], "lora-meta-table"),
        "preview": preview_url,
        "read_only": entry.sidecar_is_civitai,
    }
