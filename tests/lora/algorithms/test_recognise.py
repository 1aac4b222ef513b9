"""The one recogniser: the card badge names what the loader's strategies claim, from header shapes alone."""

from __future__ import annotations

from lorakit.algorithms.registry import detect_algorithm, recognise

KEY = "lora_unet_down_blocks_0_resnets_0_conv1"


def test_a_tucker_locon_is_badged_locon_as_the_loader_reads_it():
    shapes = {f"{KEY}.lora_down.weight": [4, 32, 1, 1], f"{KEY}.lora_mid.weight": [4, 4, 3, 3],
              f"{KEY}.lora_up.weight": [32, 4, 1, 1], f"{KEY}.alpha": []}
    assert recognise({"lora_down.weight": [4, 32, 1, 1], "lora_up.weight": [32, 4, 1, 1]}).algorithm == "LoRA"
    assert detect_algorithm(shapes) == "LoCon"


def test_badges_follow_the_strategies_claims():
    assert detect_algorithm({f"{KEY}.oft_blocks": [4, 8, 8]}) == "OFT"
    assert detect_algorithm({f"{KEY}.oft_blocks": [2, 4, 4, 4]}) == "BOFT"
    assert detect_algorithm({f"{KEY}.lora_down.weight": [4, 32], f"{KEY}.lora_up.weight": [32, 4],
                             f"{KEY}.dora_scale": [32, 1]}) == "LoRA+DoRA"
    assert detect_algorithm({"unet.a.b.lora_A.weight": [4, 32], "unet.a.b.lora_B.weight": [32, 4]}) == "LoRA"
    assert detect_algorithm({f"{KEY}.q_layer.weight": [2, 2]}) == "Unknown"
