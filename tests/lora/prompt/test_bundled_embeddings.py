"""Bundled embeddings: `bundle_emb.NAME.*` tensors in a LoRA become a textual-inversion word while that LoRA is in
the prompt, and the word's token embedding is exactly the bundled vector."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from modules.extra_networks import parse_prompt
from modules.prompt_encoding import PromptEncoder
from modules.textual_inversion import Embedding, EmbeddingDatabase
from tests.helpers.handlers import P, make_handler
from tests.helpers.lora_testing import kohya_name, lora_targets, tiny_loaded_model


@pytest.fixture(scope="module")
def sd1():
    return tiny_loaded_model("SD1")


def test_embedding_vectors_replace_the_word_in_the_token_embeddings(sd1):
    width = sd1.text_encoders[0].get_input_embeddings().weight.shape[1]
    vector = torch.randn(1, width, generator=torch.Generator().manual_seed(0))
    database = EmbeddingDatabase()
    database.register(Embedding("cat", [vector], source="test"))
    with_embedding = PromptEncoder(sd1, embeddings=database).encode(["a photo of a cat"]).hidden
    plain = PromptEncoder(sd1).encode(["a photo of a cat"]).hidden
    assert not torch.equal(with_embedding, plain)
    cat_id = sd1.tokenizers[0]("cat", add_special_tokens=False)["input_ids"][0]
    table = sd1.text_encoders[0].get_input_embeddings().weight
    saved = table[cat_id].detach().clone()
    with torch.no_grad():
        table[cat_id] = vector[0]
        try:
            by_weight = PromptEncoder(sd1).encode(["a photo of a cat"]).hidden
        finally:
            table[cat_id] = saved
    assert torch.allclose(with_embedding, by_weight, atol=1e-6)


def test_multi_vector_embedding_takes_as_many_tokens(sd1):
    width = sd1.text_encoders[0].get_input_embeddings().weight.shape[1]
    database = EmbeddingDatabase()
    database.register(Embedding("mystyle", [torch.randn(3, width)], source="test"))
    encoder = PromptEncoder(sd1, embeddings=database)
    from modules.prompt_encoding import embedding_table, tokenize_line  # noqa: PLC0415 - imported where it is needed

    table = embedding_table(encoder.specs[0], database.snapshot(), 0)
    chunks, count = tokenize_line(encoder.specs[0], "art by mystyle", embeddings=table)
    assert count == 2 + 3 and [pos for pos, _ in chunks[0].fixes] == [2]


def test_bundled_embedding_lives_while_its_lora_is_in_the_prompt(tmp_path, sd1):
    width = sd1.text_encoders[0].get_input_embeddings().weight.shape[1]
    layer_name, layer = next(iter(lora_targets(sd1).items()))
    key = kohya_name(sd1, layer_name)
    (tmp_path / "Lora").mkdir()
    save_file({f"{key}.lora_down.weight": torch.randn(2, layer.weight.shape[1]),
               f"{key}.lora_up.weight": torch.randn(layer.weight.shape[0], 2),
               "bundle_emb.sks_dog.string_to_param.*": torch.randn(2, width),
               "bundle_emb.too_wide.string_to_param.*": torch.randn(1, width + 1)},
              str(tmp_path / "Lora" / "withemb.safetensors"))
    networks, engine = make_handler(tmp_path, sd1)
    database = EmbeddingDatabase()
    networks.handlers["lora"].embeddings = database
    p = P(sd1)
    networks.activate(p, parse_prompt("a sks_dog <lora:withemb:1>")[1])
    assert database.get("sks_dog") is not None and database.get("sks_dog").tokens == 2
    assert database.get("too_wide") is None
    assert f"Lora: bundled embedding too_wide has width {width + 1}, the text encoder expects {width}" in p.comments
    networks.activate(P(sd1), parse_prompt("a sks_dog")[1])
    assert database.get("sks_dog") is None
