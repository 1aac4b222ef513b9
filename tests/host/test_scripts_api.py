"""The Script API over real HTTP: `GET /sdapi/v1/scripts`, `/script-info`, and `POST /sdapi/v1/txt2img` with
`script_name`/`script_args` (A1111's positional order) and `alwayson_scripts`.

One server for the module: the tiny embedded SD1 checkpoint, and a kohya LoRA written by the test with known deltas
(`probe_lora`). An always-on test script (`WeightProbe`, registered as an extension's script file would be) records,
after every image, one UNet layer's and one text-encoder layer's weights and the layers the engine's last activation
rewrote: that is how the test reads back what the model held for each grid cell.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import types
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image, ImageChops

from modules import image_grid
from modules.host import WebUI
from modules.scripts import AlwaysVisible, Script
from modules.webui_server import ServerThread, create_app
from tests.helpers.lora_testing import write_kohya_lora

SIZE = {"width": 64, "height": 64, "steps": 2}


class WeightProbe(Script):
    """Always-on test script: records weights after each image; writes its one argument into the infotext."""

    layers: list[str] = []  # target names ("unet.…", "text_encoders.0.…"), looked up in the model of each image
    records: list[dict] = []
    engine = None

    def title(self) -> str:
        return "Weight probe"

    def show(self, is_img2img: bool):
        return AlwaysVisible

    def ui(self, is_img2img: bool):
        import gradio as gr  # noqa: PLC0415

        return [gr.Textbox("none", label="Probe note")]

    def process(self, p, note):
        p.extra_generation_params["Probe"] = note

    def postprocess_image(self, p, pp, note):
        stats = WeightProbe.engine.last_report.stats
        WeightProbe.records.append({"prompt": p.prompt, "seed": p.seeds[0], "touched": stats.layers_touched,
                                    "model": p.sd_model.checkpoint.name,
                                    "weights": {name: layer_of(p.sd_model, name).weight.detach().clone()
                                                for name in self.layers}})


def layer_of(model, name: str) -> torch.nn.Module:
    """A model layer by target name."""
    if name.startswith("unet."):
        return model.unet.get_submodule(name[len("unet."):])
    prefix, index, rest = name.split(".", 2)
    return model.text_encoders[int(index)].get_submodule(rest)


def _probe_module() -> types.ModuleType:
    module = types.ModuleType(WeightProbe.__module__)
    module.WeightProbe = WeightProbe
    return module


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("scripts-api")
    webui = WebUI.create(["--data-dir", str(data), "--nowebui"])
    model = webui.models.get()
    deltas = write_kohya_lora(webui.paths.lora_dir / "probe_lora.safetensors", model, seed=7)
    unet_layer = next(name for name in deltas if name.startswith("unet."))
    te_layer = next(name for name in deltas if name.startswith("text_encoders."))
    WeightProbe.layers = [unet_layer, te_layer]
    WeightProbe.engine = webui.services["lora"]
    pristine = {name: layer_of(model, name).weight.detach().clone() for name in WeightProbe.layers}
    webui.scripts.add_module(_probe_module())
    app = create_app(webui)
    thread = ServerThread(app, host="127.0.0.1", port=0).start()
    try:
        yield types.SimpleNamespace(url=f"http://127.0.0.1:{thread.port}", webui=webui, deltas=deltas,
                                    pristine=pristine)
    finally:
        thread.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=300) as c:
        yield c


def _png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


def _txt2img(client: httpx.Client, **body) -> dict:
    response = client.post("/sdapi/v1/txt2img", json={**SIZE, **body})
    assert response.status_code == 200, response.text
    return response.json()


def _axis_index(client: httpx.Client, label: str) -> int:
    info = {s["name"]: s for s in client.get("/sdapi/v1/script-info").json() if not s["is_img2img"]}
    return info["x/y/z plot"]["args"][0]["choices"].index(label)


def xyz_args(x_type, x_values, y_type=0, y_values="", z_type=0, z_values="", *, legend=True, lone=True,
             sub_grids=False, no_fixed_seeds=False, margin=0) -> list:
    """A1111's 18 positional X/Y/Z plot arguments."""
    return [x_type, x_values, [], y_type, y_values, [], z_type, z_values, [], legend, lone, sub_grids,
            no_fixed_seeds, False, False, False, margin, False]


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and ImageChops.difference(a, b).getbbox() is None


def _ink(image: Image.Image) -> Image.Image:
    """The part of a label image that holds text (bounding box of the non-white pixels)."""
    box = ImageChops.difference(image, Image.new("RGB", image.size, "white")).getbbox()
    assert box is not None, "no text drawn"
    return image.crop(box)


# ------------------------------------------------------------------------------------------------ listing


def test_scripts_and_script_info_have_a1111_shapes(client):
    listing = client.get("/sdapi/v1/scripts").json()
    for name in ("x/y/z plot", "prompt matrix", "prompts from file or textbox", "weight probe"):
        assert name in listing["txt2img"]
    assert "x/y/z plot" in listing["img2img"]
    infos = client.get("/sdapi/v1/script-info").json()
    xyz = next(s for s in infos if s["name"] == "x/y/z plot" and not s["is_img2img"])
    assert xyz["is_alwayson"] is False
    labels = [arg["label"] for arg in xyz["args"]]
    assert len(labels) == 18
    assert labels[:2] == ["X type", "X values"] and labels[9] == "Draw legend" and labels[12] == "Keep -1 for seeds"
    assert labels[17] == "Use text inputs instead of dropdowns"
    choices = xyz["args"][0]["choices"]
    # A1111's txt2img indices, which clients send: 1 Seed, 4 Steps, 6 CFG Scale, 7 Prompt S/R, 9 Sampler
    assert [choices[i] for i in (0, 1, 4, 6, 7, 9, 11)] == ["Nothing", "Seed", "Steps", "CFG Scale", "Prompt S/R",
                                                         "Sampler", "Checkpoint name"]
    assert "Lora weight" in choices and "Lora file" in choices and "Lora block preset" in choices
    margin = xyz["args"][16]
    assert (margin["label"], margin["minimum"], margin["maximum"], margin["value"]) == ("Grid margins (px)", 0, 500, 0)
    probe = next(s for s in infos if s["name"] == "weight probe" and not s["is_img2img"])
    assert probe["is_alwayson"] is True and probe["args"][0]["value"] == "none"


def test_unknown_script_names_are_422_naming_them(client):
    response = client.post("/sdapi/v1/txt2img", json={**SIZE, "script_name": "no such plot"})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "ScriptNotFound" and "'no such plot'" in body["detail"] and "x/y/z plot" in body["detail"]
    response = client.post("/sdapi/v1/txt2img", json={**SIZE, "alwayson_scripts": {"ghost": {"args": []}}})
    assert response.status_code == 422 and "'ghost'" in response.json()["detail"]
    response = client.post("/sdapi/v1/txt2img", json={**SIZE, "script_name": "x/y/z plot",
                                                      "script_args": xyz_args(4, "1, x")})
    assert response.status_code == 422 and "Steps" in response.json()["detail"]
    response = client.post("/sdapi/v1/txt2img", json={**SIZE, "script_name": "x/y/z plot",
                                                      "script_args": xyz_args(13, "0.5")})
    assert response.status_code == 422 and "Sigma Churn" in response.json()["detail"]


def test_alwayson_script_args_from_the_request_and_defaults(client):
    given = _txt2img(client, prompt="a cat", seed=3, alwayson_scripts={"Weight probe": {"args": ["hello"]}})
    assert "Probe: hello" in json.loads(given["info"])["infotexts"][0]
    default = _txt2img(client, prompt="a cat", seed=3)
    assert "Probe: none" in json.loads(default["info"])["infotexts"][0]


# ------------------------------------------------------------------------------------------------ X/Y/Z plot


def test_xyz_plot_returns_grid_then_cells_with_labels(client):
    body = _txt2img(client, prompt="a cat", seed=5, script_name="x/y/z plot",
                    script_args=xyz_args(1, "11, 12", 7, "cat, dog"))
    info = json.loads(body["info"])
    images = [_png(b64) for b64 in body["images"]]
    assert len(images) == 1 + 4 and info["index_of_first_image"] == 1
    grid, cells = images[0], images[1:]
    assert all(cell.size == (64, 64) for cell in cells)
    infotexts = info["infotexts"]
    assert "Script: X/Y/Z plot" in infotexts[0] and "X Type: Seed" in infotexts[0]
    assert 'X Values: "11, 12"' in infotexts[0] and "Y Type: Prompt S/R" in infotexts[0]
    assert [json.loads(body["info"])["all_seeds"][i] for i in range(1, 5)] == [11, 12, 11, 12]
    assert infotexts[3].startswith("a dog") and "Seed: 11," in infotexts[3]
    # The grid: cells where the layout puts them, labels that render the axis values.
    size = image_grid.font_size_for(64, 64)
    x_labels, y_labels = ["Seed: 11", "Seed: 12"], ["cat", "dog"]
    top = max(image_grid.render_label(text, 64, size).height for text in x_labels)
    layout = image_grid.GridLayout(64, 64, 2, 2, 0, left=max(64 * 3 // 4, 48), top=top)
    assert grid.size == layout.size
    for index, cell in enumerate(cells):
        assert _same(grid.crop(layout.cell_box(index % 2, index // 2)), cell), f"cell {index} is not in its place"
    for col, text in enumerate(x_labels):
        drawn = _ink(grid.crop(layout.column_label_box(col)))
        assert _same(drawn, _ink(image_grid.render_label(text, 64, size))), f"column {col} is not labelled {text!r}"
        assert not _same(drawn, _ink(image_grid.render_label(x_labels[1 - col], 64, size)))
    for row, text in enumerate(y_labels):
        drawn = _ink(grid.crop(layout.row_label_box(row)))
        assert _same(drawn, _ink(image_grid.render_label(text, layout.left, size))), f"row {row} is not {text!r}"
    # A cell is the same picture as the same single generation.
    single = _txt2img(client, prompt="a dog", seed=12)
    assert _same(_png(single["images"][0]), cells[3])


def test_lora_weight_axis_cells_hold_pristine_plus_w_delta(server, client):
    WeightProbe.records.clear()
    lora_weight = _axis_index(client, "Lora weight")
    body = _txt2img(client, prompt="a cat <lora:probe_lora:0.8>", seed=21, script_name="x/y/z plot",
                    script_args=xyz_args(lora_weight, "probe_lora: 0, 0.25, 0.5, 0.75, 1", 1, "21, 22"))
    info = json.loads(body["info"])
    cells = [_png(b64) for b64 in body["images"][1:]]
    assert len(cells) == 10
    assert [text.split("\n")[0] for text in info["infotexts"][1:6]] == [
        f"a cat <lora:probe_lora:{w}>" for w in ("0", "0.25", "0.5", "0.75", "1")]
    records = WeightProbe.records
    assert len(records) == 10
    for record in records:
        weight = float(record["prompt"].split(":")[-1].rstrip(">"))
        for name, value in record["weights"].items():
            expected = server.pristine[name] + weight * server.deltas[name]
            assert torch.allclose(value, expected, rtol=0, atol=1e-6), (name, weight)
    # Cells go weight by weight (the costly axis outermost): only a new weight rewrites layers, never a new seed.
    weights = [r["prompt"] for r in records]
    assert len(dict.fromkeys(weights)) == 5
    assert [weights[i] == weights[i + 1] for i in range(0, 10, 2)] == [True] * 5
    layers = len(server.deltas)
    assert [r["touched"] for r in records[1:]] == [0, layers, 0, layers, 0, layers, 0, layers, 0]
    for index, weight in ((1, "0.25"), (4, "1")):  # x index (seed 21 row): the same as a single generation
        single = _txt2img(client, prompt=f"a cat <lora:probe_lora:{weight}>", seed=21)
        assert _same(_png(single["images"][0]), cells[index])


def _expected(server, record, te: float, unet: float) -> None:
    """The recorded weights are pristine + multiplier x delta (text-encoder layer `te`, UNet layer `unet`)."""
    for name, value in record["weights"].items():
        factor = te if name.startswith("text_encoders.") else unet
        expected = server.pristine[name] + factor * server.deltas[name]
        assert torch.allclose(value, expected, rtol=0, atol=1e-6), (record["prompt"], name)


def test_lora_block_preset_axis(server, client):
    WeightProbe.records.clear()
    axis = _axis_index(client, "Lora block preset")
    vector = ",".join(["1", "1"] + ["0"] * 15)  # BASE and IN01 (the probed UNet layer's block) on
    body = _txt2img(client, prompt="a cat <lora:probe_lora:1>", seed=81, script_name="x/y/z plot",
                    script_args=xyz_args(axis, f'ALL, NONE, OUTD, "{vector}"'))
    prompts = [text.split("\n")[0] for text in json.loads(body["info"])["infotexts"][1:]]
    assert prompts == ["a cat <lora:probe_lora:1:lbw=ALL>", "a cat <lora:probe_lora:1:lbw=NONE>",
                       "a cat <lora:probe_lora:1:lbw=OUTD>", f"a cat <lora:probe_lora:1:lbw={vector}>"]
    assert WeightProbe.layers[0].startswith("unet.down_blocks.0.")  # block IN01
    by_prompt = {record["prompt"]: record for record in WeightProbe.records}
    for prompt, (te, unet) in zip(prompts, ((1, 1), (0, 0), (1, 0), (1, 1))):
        _expected(server, by_prompt[prompt], te, unet)
    response = client.post("/sdapi/v1/txt2img", json={**SIZE, "prompt": "<lora:probe_lora:1>",
                                                      "script_name": "x/y/z plot",
                                                      "script_args": xyz_args(axis, "NOPE")})
    assert response.status_code == 422 and "NOPE" in response.json()["detail"]


def test_lora_te_and_unet_weight_axes(server, client):
    WeightProbe.records.clear()
    te_axis, unet_axis = _axis_index(client, "Lora TE weight"), _axis_index(client, "Lora UNet weight")
    body = _txt2img(client, prompt="a cat <lora:probe_lora:1>", seed=83, script_name="x/y/z plot",
                    script_args=xyz_args(te_axis, "0, 0.5", unet_axis, "1, 0.25"))
    prompts = [text.split("\n")[0] for text in json.loads(body["info"])["infotexts"][1:]]
    assert prompts == [f"a cat <lora:probe_lora:1:te={te}:unet={unet}>" for unet in ("1", "0.25") for te in ("0", "0.5")]
    by_prompt = {record["prompt"]: record for record in WeightProbe.records}
    for prompt, (te, unet) in zip(prompts, ((0, 1), (0.5, 1), (0, 0.25), (0.5, 0.25))):
        _expected(server, by_prompt[prompt], te, unet)


def test_lora_file_axis_swaps_in_every_epoch_of_a_folder(server, client):
    model = server.webui.models.current
    epochs = [write_kohya_lora(server.webui.paths.lora_dir / "run" / f"run-{n:02d}.safetensors", model, seed=100 + n)
              for n in (1, 2, 3)]
    WeightProbe.records.clear()
    axis = _axis_index(client, "Lora file")
    body = _txt2img(client, prompt="a cat <lora:probe_lora:0.5>", seed=91, script_name="x/y/z plot",
                    script_args=xyz_args(axis, "run/"))
    infotexts = json.loads(body["info"])["infotexts"]
    assert [text.split("\n")[0] for text in infotexts[1:]] == [f"a cat <lora:run/run-0{n}:0.5>" for n in (1, 2, 3)]
    assert 'X Type: Lora file, X Values: run/' in infotexts[0]
    for record, deltas in zip(WeightProbe.records, epochs):
        for name, value in record["weights"].items():
            assert torch.allclose(value, server.pristine[name] + 0.5 * deltas[name], rtol=0, atol=1e-6)


def test_progress_counts_grid_cells_over_http(server, client):
    seen: list[dict] = []
    done = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as poller:
            while not done.is_set():
                seen.append(poller.get("/sdapi/v1/progress", params={"skip_current_image": True}).json())
                time.sleep(0.02)

    watcher = threading.Thread(target=poll)
    watcher.start()
    try:
        _txt2img(client, prompt="a cat", seed=7, steps=12, script_name="x/y/z plot",
                 script_args=xyz_args(1, "1, 2", 4, "10, 12", lone=False))
    finally:
        done.set()
        watcher.join()
    cells = [(s["progress"], s["textinfo"]) for s in seen if "X/Y/Z plot: cell" in (s["textinfo"] or "")]
    numbers = {int(text.split("cell ")[1].split(" ")[0]) for _, text in cells}
    assert len(numbers) >= 2, seen[:5]
    for progress, text in cells:
        number = int(text.split("cell ")[1].split(" ")[0])
        assert (number - 1) / 4 <= progress <= number / 4 + 1e-9, (progress, text)


def test_saved_cells_carry_their_own_infotext_and_the_grid_names_the_axes(server, client):
    outputs = Path(server.webui.paths.outputs_dir)
    before = set(outputs.rglob("*.png"))
    _txt2img(client, prompt="a cat", seed=5, save_images=True, script_name="x/y/z plot",
             script_args=xyz_args(1, "201, 202", lone=False))
    new = sorted(set(outputs.rglob("*.png")) - before)
    grids = [path for path in new if "txt2img-grids" in path.parts]
    cells = [path for path in new if "txt2img-images" in path.parts]
    assert len(grids) == 1 and len(cells) == 2, new
    def parameters(path: Path) -> str:
        with Image.open(path) as image:
            return image.info["parameters"]

    grid_text = parameters(grids[0])
    assert "Script: X/Y/Z plot" in grid_text and 'X Values: "201, 202"' in grid_text
    texts = sorted(parameters(path) for path in cells)
    assert "Seed: 201," in texts[0] and "Seed: 202," in texts[1]
    assert all("Script:" not in text and "X Type" not in text for text in texts)


def test_interrupt_stops_the_rest_of_the_grid(server):
    result: dict = {}

    def grid() -> None:
        with httpx.Client(base_url=server.url, timeout=300) as own:
            result.update(_txt2img(own, prompt="a cat", seed=1, steps=30, script_name="x/y/z plot",
                                   script_args=xyz_args(1, "1, 2, 3, 4")))

    worker = threading.Thread(target=grid)
    worker.start()
    with httpx.Client(base_url=server.url, timeout=30) as poller:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            text = poller.get("/sdapi/v1/progress", params={"skip_current_image": True}).json()["textinfo"] or ""
            if "cell 2 of 4" in text:
                break
            time.sleep(0.02)
        assert poller.post("/sdapi/v1/interrupt").status_code == 200
    worker.join(300)
    info = json.loads(result["info"])
    assert info["interrupted"] is True
    cells = [_png(b64) for b64 in result["images"][1:]]
    assert len(cells) == 4
    assert cells[0].getbbox() is not None and cells[3].getbbox() is None  # cell 4 was never generated: blank


def test_prompt_sr_over_a_lora_tag(client):
    body = _txt2img(client, prompt="a cat <lora:probe_lora:1>", seed=31, script_name="x/y/z plot",
                    script_args=xyz_args(7, "<lora:probe_lora:1>, <lora:probe_lora:0.5>, "))
    info = json.loads(body["info"])
    cells = [_png(b64) for b64 in body["images"][1:]]
    assert len(cells) == 3
    assert info["infotexts"][2].startswith("a cat <lora:probe_lora:0.5>")
    assert "Lora hashes" in info["infotexts"][1] and "Lora hashes" not in info["infotexts"][3]
    for index, prompt in ((1, "a cat <lora:probe_lora:0.5>"), (2, "a cat ")):
        single = _txt2img(client, prompt=prompt, seed=31)
        assert _same(_png(single["images"][0]), cells[index]), prompt
    assert not _same(cells[0], cells[1])


def test_z_axis_makes_sub_grids(client):
    body = _txt2img(client, prompt="a cat", seed=41, script_name="x/y/z plot",
                    script_args=xyz_args(1, "1, 2", 0, "", 4, "1, 2", lone=False, sub_grids=True, margin=4))
    images = [_png(b64) for b64 in body["images"]]
    assert len(images) == 3  # the Z grid, then one sub-grid per Z value
    sub_w, sub_h = images[1].size
    assert images[2].size == (sub_w, sub_h) and sub_w == 64 * 2 + 4
    assert images[0].size[0] == 2 * sub_w + 4


# ------------------------------------------------------------------------------------------------ other scripts


def test_prompt_matrix_combines_parts_with_a_lora_tag(client):
    body = _txt2img(client, prompt="a cat|snow|<lora:probe_lora:0.7>", seed=51, script_name="prompt matrix",
                    script_args=[False, False, "positive", "comma", 0])
    info = json.loads(body["info"])
    images = [_png(b64) for b64 in body["images"]]
    assert len(images) == 1 + 4 and images[0].size[1] > 64
    assert [text.split("\n")[0] for text in info["infotexts"][1:]] == [
        "a cat", "a cat, snow", "a cat, <lora:probe_lora:0.7>", "a cat, snow, <lora:probe_lora:0.7>"]
    single = _txt2img(client, prompt="a cat, <lora:probe_lora:0.7>", seed=51)
    assert _same(_png(single["images"][0]), images[3])


def test_prompts_from_file_lines_and_options(client):
    lines = 'a red cat\n--prompt "a blue dog <lora:probe_lora:0.5>" --steps 3 --seed 9\n'
    body = _txt2img(client, prompt="", seed=61, script_name="prompts from file or textbox",
                    script_args=[False, False, "start", lines])
    infotexts = json.loads(body["info"])["infotexts"]
    assert len(body["images"]) == 2
    assert infotexts[0].startswith("a red cat") and "Seed: 61" in infotexts[0]
    assert infotexts[1].startswith("a blue dog") and "Steps: 3" in infotexts[1] and "Seed: 9," in infotexts[1]
    response = client.post("/sdapi/v1/txt2img", json={**SIZE, "script_name": "prompts from file or textbox",
                                                      "script_args": [False, False, "start", "ok\n--stepz 3"]})
    assert response.status_code == 422 and "line 2" in response.json()["detail"] and "--stepz" in response.json()["detail"]


def test_progress_counts_the_whole_grid(server):
    state = server.webui.state
    seen = []
    with state.outer_job("X/Y/Z plot", 4):
        for _ in range(4):
            state.begin("txt2img", 1)
            state.sampling_steps, state.sampling_step = 2, 1
            seen.append(state.progress)
            state.end()
            seen.append(state.progress)
        assert state.active
    assert seen == [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]
    assert not state.active


def test_checkpoint_axis_switches_models_and_restores_the_first(server, client):
    """Last in the module: it loads another checkpoint (and the first one again, afresh)."""
    from modules.tiny_models import write_single_file  # noqa: PLC0415

    webui = server.webui
    write_single_file(webui.paths.ckpt_dir / "tiny-other.safetensors", "SD1", seed=9)
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    titles = [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
    first = webui.models.current.checkpoint.title
    assert any("tiny-other" in t for t in titles)
    WeightProbe.records.clear()
    body = _txt2img(client, prompt="a cat", seed=3, script_name="x/y/z plot",
                    script_args=xyz_args(11, "tiny-other, " + first.split(" [")[0], 1, "1, 2"))
    infotexts = json.loads(body["info"])["infotexts"]
    assert "Model: tiny-other" in infotexts[1] and "Model: tiny-other" in infotexts[3]
    assert "Model: tiny-other" not in infotexts[2]
    models = [record["model"] for record in WeightProbe.records]
    assert models == sorted(models, key=models.index) and len(dict.fromkeys(models)) == 2  # one switch
    assert webui.models.current.checkpoint.title == first
