"""The real server under concurrent API load: every request answered, no cross-talk, no leak, nothing lost.

`python launch.py --nowebui` runs as a subprocess on 127.0.0.1 (so its memory is its own and its RSS is read from
/proc/<pid>/status) with a tiny SD1 checkpoint and four LoRA files with distinct effects (one in a sub-folder, reached
by its alias). Before the load, each request variant (no LoRA, one LoRA, two or three LoRAs with other weights) is
generated alone: that image is the reference. Then client threads (3 for a few seconds per round in the quick form,
6 for longer rounds in the full form) mix, for a number of rounds:

* `POST /sdapi/v1/txt2img` with a random variant: the response's infotext and the PNG's own `parameters` must name
  exactly that variant's LoRAs with the right hashes, and the pixels must equal the reference (same seed);
* `GET /sdapi/v1/loras`: always the four files, also while another client rescans;
* `POST /sdapi/v1/refresh-loras`;
* sidecar edits of the same four files by every client: `POST /sdapi/v1/lora/metadata` sets activation text, notes
  and preferred weight, the card editor's `POST /lora-ui/save` sets description and negative text (each edit's
  values carry one token), so a lost update between the two writers would show.

Every request must be answered 2xx. The server's RSS is read after each round; the growth from round 2 (after a
warm-up round that fills the caches) to the last round must stay under `RSS_GROWTH_LIMIT`. After the load, every
variant alone gives the reference image again (weights pristine), and each sidecar is valid JSON equal to the last
edit of each writer (with the key another tool stored there still present). After every save, the file never holds
an older value of the same client (a lost update); a second test hammers one sidecar with both writers to make such
a race likely if there is one.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from modules.tiny_models import write_single_file
from tests.helpers.hashes import payload_hash
from tests.helpers.lora_testing import tiny_loaded_model, write_kohya_lora
from tests.helpers.servers import ROOT, free_port, stop_servers, wait_until_up

TINY = {"negative_prompt": "blurry", "seed": 1234, "sampler_name": "Euler", "steps": 3, "width": 64, "height": 64}
PROMPT = "a quiet harbor at dawn"
# prompt suffix -> [(name as written in the prompt, file stem)], in prompt order
VARIANTS: list[tuple[str, list[tuple[str, str]]]] = [
    ("", []),
    (" <lora:ink:0.9>", [("ink", "ink")]),
    (" <lora:glow:1>", [("glow", "glow")]),
    (" <lora:ink:0.5> <lora:paper:1>", [("ink", "ink"), ("paper", "paper")]),
    (" <lora:frost-alias:0.8> <lora:glow:0.6>", [("frost-alias", "frost"), ("glow", "glow")]),
    (" <lora:sub/frost:1> <lora:paper:0.7> <lora:ink:0.3>", [("sub/frost", "frost"), ("paper", "paper"),
                                                            ("ink", "ink")]),
]
FILES = {"ink": "ink", "glow": "glow", "paper": "paper", "frost": "sub/frost"}  # stem -> path under the Lora folder
# Measured here: ~1 MiB of drift from round 2 on (the warm-up round fills the caches: networks in memory, hashes,
# allocator arenas of the uvicorn and client-facing threads). A generation with one LoRA touches 2 MiB (Linear layers
# of UNet and text encoder) to 5.6 MiB (with the 3x3 convs) of this tiny model's weights, so leaking a backup or a
# delta per generation crosses 32 MiB within 6-16 generations; the quick form runs ~40 between round 2 and the last.
RSS_GROWTH_LIMIT = 32 * 1024 * 1024
HASHES_RE = re.compile(r'Lora hashes: "([^"]*)"')


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS from /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def pixels(image_b64: str) -> tuple[bytes, str]:
    """(decoded RGB pixels, the PNG's own `parameters` text) of a base64 PNG from the API."""
    image = Image.open(io.BytesIO(base64.b64decode(image_b64)))
    text = image.info.get("parameters", "")
    return image.convert("RGB").tobytes(), text


def lora_hashes(infotext: str) -> list[tuple[str, str]]:
    """The `Lora hashes` entries of an infotext as [(name, short hash)], in order ([] when there are none)."""
    found = HASHES_RE.findall(infotext)
    assert len(found) <= 1, infotext
    if not found:
        return []
    return [tuple(part.rsplit(": ", 1)) for part in found[0].split(", ")]  # type: ignore[misc]


@dataclass
class Server:
    """The launched server: its URL, process, folders, and the LoRA files' short hashes by stem."""

    base: str
    process: subprocess.Popen
    lora_dir: Path
    log_path: Path
    hashes: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("load")
    write_single_file(data / "models" / "Stable-diffusion" / "tiny.safetensors", "SD1", seed=5)
    lora_dir = data / "models" / "Lora"
    model = tiny_loaded_model("SD1", seed=5)  # same layers and shapes as the checkpoint
    write_kohya_lora(lora_dir / "ink.safetensors", model, rank=4, alpha=8.0, seed=11)
    write_kohya_lora(lora_dir / "glow.safetensors", model, rank=4, alpha=8.0, seed=12, conv=True, text_encoder=False)
    write_kohya_lora(lora_dir / "paper.safetensors", model, rank=2, alpha=4.0, seed=13, only=12)
    write_kohya_lora(lora_dir / "sub" / "frost.safetensors", model, rank=4, alpha=6.0, seed=14,
                     metadata={"ss_output_name": "frost-alias"})
    for index, path in enumerate(FILES.values()):
        (lora_dir / f"{path}.json").write_text(json.dumps({"description": "start", "civitai": {"id": index}}))
    port = free_port()
    log_path = data / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "launch.py"), "--port", str(port), "--data-dir", str(data), "--nowebui",
             "--no-embedded-default"], cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_up(base + "/sdapi/v1/progress", process, timeout=120)
            hashes = {stem: payload_hash(lora_dir / f"{path}.safetensors")[:12] for stem, path in FILES.items()}
            yield Server(base, process, lora_dir, log_path, hashes)
        finally:
            stop_servers(process)


@dataclass
class Edit:
    """One sidecar edit as a client saw it: file stem, writer ("api" or "ui"), the values set, when it was sent and
    when it was answered."""

    stem: str
    writer: str
    values: dict[str, Any]
    sent: float
    answered: float


@dataclass
class LoadRun:
    """What the client threads saw (appended from several threads: list.append is atomic)."""

    problems: list[str] = field(default_factory=list)
    edits: list[Edit] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1


def generate(client: httpx.Client, variant: int) -> httpx.Response:
    return client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT + VARIANTS[variant][0], **TINY})


def check_image(server: Server, variant: int, response: httpx.Response, reference: bytes | None) -> list[str]:
    """Problems with one txt2img answer: LoRA set and hashes in the infotext and the PNG, pixels vs. reference."""
    suffix, loras = VARIANTS[variant]
    body = response.json()
    infotext = json.loads(body["info"])["infotexts"][0]
    got_pixels, png_text = pixels(body["images"][0])
    expected = [(name, server.hashes[stem]) for name, stem in loras]
    problems = []
    if not infotext.startswith(PROMPT + suffix + "\n"):
        problems.append(f"variant {variant}: infotext is for another prompt: {infotext[:120]!r}")
    if lora_hashes(infotext) != expected:
        problems.append(f"variant {variant}: infotext names {lora_hashes(infotext)}, expected {expected}")
    if png_text != infotext:
        problems.append(f"variant {variant}: the PNG's parameters differ from the response's infotext")
    if reference is not None and got_pixels != reference:
        problems.append(f"variant {variant}: image differs from the same request made alone")
    return problems


TOKEN_RE = re.compile(r"c(\d+)-r(\d+)-n(\d+)$")


def older_own_values(state: dict[str, Any], client_id: int, order: tuple[int, int], values: dict[str, Any],
                     where: str) -> list[str]:
    """Problems when `state` holds, for a key of `values`, an older value written by the same client: another writer
    may have saved since, but never one that read the sidecar before this client's save (a lost update)."""
    problems = []
    for key in values:
        match = TOKEN_RE.search(str(state.get(key, "")))
        if match and int(match[1]) == client_id and (int(match[2]), int(match[3])) < order:
            problems.append(f"lost update: {where} {key!r} went back to {state.get(key)!r} after client "
                            f"{client_id} wrote {values[key]!r}")
    return problems


def check_own_edit(server: Server, stem: str, client_id: int, order: tuple[int, int],
                   values: dict[str, Any]) -> list[str]:
    """Right after a client's save is answered: the sidecar is valid JSON without an older value of that client."""
    path = server.lora_dir / f"{FILES[stem]}.json"
    try:
        on_disk = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        return [f"{path.name} is not valid JSON during the load: {exc}"]
    return older_own_values(on_disk, client_id, order, values, path.name)


def client_loop(server: Server, run: LoadRun, references: dict[int, bytes], client_id: int, round_no: int,
                deadline: float, ledger: Any) -> None:
    """One API client until `deadline`: a seeded mix of generations, listings, rescans and sidecar edits."""
    rng = random.Random(client_id * 1000 + round_no)
    expected_names = set(FILES)
    with httpx.Client(base_url=server.base, timeout=120) as client:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            op = rng.choices(["txt2img", "loras", "refresh", "edit"], weights=[5, 2, 1, 4])[0]
            try:
                if op == "txt2img":
                    variant = rng.randrange(len(VARIANTS))
                    response = generate(client, variant)
                    if response.status_code == 200:
                        run.problems.extend(check_image(server, variant, response, references[variant]))
                elif op == "loras":
                    response = client.get("/sdapi/v1/loras")
                    if response.status_code == 200:
                        names = {item["name"] for item in response.json()}
                        if names != expected_names:
                            run.problems.append(f"GET /loras listed {sorted(names)} during the load")
                elif op == "refresh":
                    response = client.post("/sdapi/v1/refresh-loras")
                else:
                    stem = rng.choice(sorted(FILES))
                    token = f"c{client_id}-r{round_no}-n{n}"
                    sent = time.monotonic()
                    if rng.random() < 0.5:  # the API's metadata route
                        op = "edit api"
                        values = {"activation text": f"trigger {token}", "notes": f"notes {token}",
                                  "preferred weight": round(rng.uniform(0.1, 1.5), 3)}
                        response = client.post("/sdapi/v1/lora/metadata", json={"name": stem, **values})
                        if response.status_code == 200:  # the sidecar as this save wrote it
                            answer = response.json()["user_metadata"]
                            if any(answer.get(k) != v for k, v in values.items()):
                                run.problems.append(f"{op} {token} of {stem} answered with {answer}")
                    else:  # the card editor's save route
                        op = "edit ui"
                        values = {"description": f"description {token}", "negative text": f"negative {token}"}
                        key = str(server.lora_dir / f"{FILES[stem]}.safetensors")
                        response = client.post("/lora-ui/save", json={"key": key, "fields": values})
                        if response.status_code == 200:  # the card now: this save's values or a later save's
                            card = response.json()["card"]
                            answer = {"description": card["description"], "negative text": card["negative"]}
                            run.problems.extend(older_own_values(answer, client_id, (round_no, n), values,
                                                                 f"the card of {stem} answered:"))
                    if response.status_code == 200:
                        run.edits.append(Edit(stem, op.split()[1], values, sent, time.monotonic()))
                        run.problems.extend(check_own_edit(server, stem, client_id, (round_no, n), values))
            except httpx.HTTPError as exc:
                run.problems.append(f"{op}: no answer ({type(exc).__name__}: {exc})")
                continue
            if 200 <= response.status_code < 300:
                ledger.served()
                run.count(op)
            else:
                run.problems.append(f"{op}: {response.status_code} {response.text[:200]}")


def last_edits(edits: list[Edit]) -> list[Edit]:
    """The edits that may have been applied last: those no other edit was sent after the answer of."""
    latest_sent = max(edit.sent for edit in edits)
    return [edit for edit in edits if edit.answered >= latest_sent]


@pytest.mark.slow
def test_concurrent_clients_get_their_own_images_and_nothing_leaks_or_is_lost(server: Server, ledger: Any) -> None:
    clients, rounds, seconds = (6, 8, 16.0) if ledger.full else (3, 4, 4.5)
    with httpx.Client(base_url=server.base, timeout=120) as client:
        references: dict[int, bytes] = {}
        for variant in range(len(VARIANTS)):  # each request alone, before the load
            response = generate(client, variant)
            assert response.status_code == 200, response.text[:300]
            ledger.served()
            assert check_image(server, variant, response, None) == []
            references[variant] = pixels(response.json()["images"][0])[0]
        distinct = len(set(references.values()))
        assert distinct == len(VARIANTS), f"only {distinct} distinct images: the LoRAs must change the image"

    run = LoadRun()
    rss: list[int] = []
    generated: list[int] = []  # generations answered so far, after each round
    started = time.monotonic()
    for round_no in range(1, rounds + 1):
        deadline = time.monotonic() + seconds
        threads = [threading.Thread(target=client_loop, name=f"load-client-{i}",
                                    args=(server, run, references, i, round_no, deadline, ledger))
                   for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert not any(thread.is_alive() for thread in threads), "a client hung"
        rss.append(rss_bytes(server.process.pid))
        generated.append(run.counts.get("txt2img", 0))
    elapsed = time.monotonic() - started
    mib = [round(value / 2**20, 1) for value in rss]
    growth = rss[-1] - rss[1]
    print(f"\nload: {clients} clients x {rounds} rounds in {elapsed:.1f} s; answered {dict(sorted(run.counts.items()))}")
    measured = generated[-1] - generated[1]
    print(f"load: server RSS after each round (MiB): {mib}; growth round 2 -> {rounds}: {growth / 2**20:.1f} MiB "
          f"over {measured} generations")
    assert server.process.poll() is None, server.log_path.read_text()[-3000:]
    assert run.problems == [], run.problems[:20]
    assert run.counts.get("txt2img", 0) >= clients and run.counts.get("edit api", 0) >= 2, run.counts
    assert run.counts.get("edit ui", 0) >= 2, run.counts
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew {growth / 2**20:.1f} MiB from round 2 to {rounds}: {mib}"

    with httpx.Client(base_url=server.base, timeout=120) as client:
        for variant in range(len(VARIANTS)):  # alone again: the weights are pristine, every LoRA applies as before
            response = generate(client, variant)
            assert response.status_code == 200, response.text[:300]
            ledger.served()
            problems = check_image(server, variant, response, references[variant])
            ledger.intact(problems == [], f"image of variant {variant} after the load: {problems}")
        # A rescan that read a sidecar just before a concurrent save can leave the registry's copy one save behind
        # until the next rescan (the file itself is right; known race, issue 8): compare after one.
        assert client.post("/sdapi/v1/refresh-loras").status_code == 200
        ledger.served()
        for stem, path in FILES.items():
            sidecar = server.lora_dir / f"{path}.json"
            try:
                on_disk = json.loads(sidecar.read_text(encoding="utf-8"))
            except ValueError as exc:
                ledger.intact(False, f"{sidecar.name} is not valid JSON after the load: {exc}")
                continue
            for writer, untouched in (("api", {"notes": None}), ("ui", {"description": "start"})):
                edits = [edit for edit in run.edits if edit.stem == stem and edit.writer == writer]
                finals = [edit.values for edit in last_edits(edits)] if edits else [untouched]
                shown = {key: on_disk.get(key) for key in finals[0]}
                ledger.intact(any(all(on_disk.get(k) == v for k, v in final.items()) for final in finals),
                              f"{sidecar.name}: {shown} is not the last {writer} edit (one of {finals})")
            ledger.intact(on_disk.get("civitai") == {"id": list(FILES).index(stem)},
                          f"{sidecar.name} lost the key another tool stored")
            details = client.get("/sdapi/v1/lora", params={"name": stem})
            card = client.get("/lora-ui/card", params={"key": str(server.lora_dir / f"{path}.safetensors")})
            ledger.served(2)
            assert details.status_code == 200 and details.json()["user_metadata"] == on_disk
            assert card.status_code == 200 and card.json()["card"]["description"] == on_disk["description"]


def test_concurrent_sidecar_writers_lose_no_update(server: Server, ledger: Any) -> None:
    """Two API clients and two card-editor clients save the same sidecar as fast as they can; after each save the file
    is valid JSON and never holds an older value of the same client (a read-modify-write race would bring one back)."""
    seconds = 10.0 if ledger.full else 3.0
    stem, key = "paper", str(server.lora_dir / "paper.safetensors")
    problems: list[str] = []
    saves: dict[int, int] = {}

    def writer(client_id: int) -> None:
        deadline = time.monotonic() + seconds
        with httpx.Client(base_url=server.base, timeout=60) as client:
            n = 0
            while time.monotonic() < deadline:
                n += 1
                token = f"c{client_id}-r0-n{n}"
                if client_id % 2:
                    values = {"notes": f"notes {token}"}
                    response = client.post("/sdapi/v1/lora/metadata", json={"name": stem, **values})
                else:
                    values = {"description": f"description {token}"}
                    response = client.post("/lora-ui/save", json={"key": key, "fields": values})
                if response.status_code != 200:
                    problems.append(f"{response.status_code} {response.text[:200]}")
                    continue
                ledger.served()
                problems.extend(check_own_edit(server, stem, client_id, (0, n), values))
            saves[client_id] = n

    threads = [threading.Thread(target=writer, args=(client_id,)) for client_id in range(100, 104)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    print(f"\nsidecar writers: {saves} saves in {seconds} s, {len(problems)} problems")
    ledger.intact(problems == [], f"{len(problems)} lost or broken sidecar updates, e.g. {problems[:3]}")
    on_disk = json.loads((server.lora_dir / "paper.json").read_text(encoding="utf-8"))
    assert on_disk.get("civitai") == {"id": list(FILES).index(stem)}
