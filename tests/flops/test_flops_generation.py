"""Generation FLOPs (trainer.flops.decode_flops_per_token / generation_flops) against hand numbers.

tiny-7: V=512, L=7 (block 6, 0-based 5, global), D=64, F=128, 4 heads of 16,
2 kv heads, window 4. Per block: q 4,096 + k 2,048 + v 2,048 + o 4,096 +
q/k norms 32 + gate/up/down 24,576 + four norms 256 = 37,152; backbone
N = 7·37,152 + final norm 64 = 260,128. Per attended key and layer: QKᵀ
and AV, 2·4·16 FLOPs each = 256. Unembedding 2·64·512 = 65,536.
"""

import pytest

from trainer import flops
from trainer.model import model_config
from trainer.model.errors import ConfigError

CFG = model_config.get_config("tiny-7")
BODY = 2 * 260_128 + 65_536  # 585,792: backbone + unembedding of one token


def test_decode_step_by_hand():
    # Context 10: six local layers see min(10, 4) = 4 keys, the global one 10 -> 34 keys.
    assert flops.decode_flops_per_token(CFG, 10) == BODY + 256 * 34 == 594_496
    # Context 2 (below the window): every layer sees 2 keys.
    assert flops.decode_flops_per_token(CFG, 2) == BODY + 256 * 14


def test_generation_by_hand():
    # Prompt 3: 3 tokens through the backbone, causal keys 1+2+3 on each of 7 layers
    # (all under the window), one unembedding.
    prefill = 3 * 2 * 260_128 + 256 * 7 * 6 + 65_536
    assert prefill == 1_637_056
    # Tokens 2..4 are decode steps at contexts 4, 5, 6: 6·4 local keys + 4, 5, 6 global.
    decode = 3 * BODY + 256 * (28 + 29 + 30)
    assert decode == 1_779_648
    got = flops.generation_flops(CFG, prompt_len=3, new_tokens=4)
    assert got == {
        "prefill": 1_637_056,
        "decode": 1_779_648,
        "total": 3_416_704,
        "per_generated_token": 854_176,
        "decode_per_token": 593_216,
    }
    one = flops.generation_flops(CFG, prompt_len=3, new_tokens=1)
    assert (one["decode"], one["decode_per_token"], one["total"]) == (0, 0, prefill)


@pytest.mark.parametrize(
    "call",
    [
        lambda: flops.decode_flops_per_token(CFG, 0),
        lambda: flops.generation_flops(CFG, 0, 4),
        lambda: flops.generation_flops(CFG, 3, 1.5),  # type: ignore[arg-type]
    ],
)
def test_bad_lengths_are_refused(call):
    with pytest.raises(ConfigError):
        call()
