"""End to end: training steps/s of the 2xST-FCN addition model and an ST-CNN (RTS, 42 px), Triton
path vs PyTorch path on the same GPU. GPU only (on the CPU the "Triton path" would be the
interpreter, which measures nothing useful)."""
import itertools

import pytest
import torch

import stn_triton
from stn_triton.models import addition, mnist

from .conftest import HAS_CUDA

pytestmark = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device: GPU comparison skipped")

MODELS = {
    "2xst-fcn-addition": (lambda: addition.build("2xst-fcn"), (256, 2, 42, 42), 19),
    "st-cnn-rts": (lambda: mnist.build("st-cnn", in_size=42, st_pool=True), (256, 1, 42, 42), 10),
    "st-cnn-tps-e": (lambda: mnist.build("st-cnn", transform="tps"), (256, 1, 28, 28), 10),
}


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("name", list(MODELS))
def test_training_steps_per_second(benchmark, env_info, name, backend):
    from triton.testing import do_bench

    make, shape, classes = MODELS[name]
    torch.manual_seed(0)
    model = make().cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = [(torch.rand(*shape, device="cuda"), torch.randint(0, classes, (shape[0],), device="cuda")) for _ in range(4)]
    it = itertools.cycle(batches)

    def step():
        x, y = next(it)
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with stn_triton.use_backend(backend):
        ms = do_bench(step, warmup=50, rep=300, return_mode="median")

        def timed():
            step()
            torch.cuda.synchronize()

        benchmark.pedantic(timed, rounds=20, warmup_rounds=3)
    benchmark.extra_info.update(env_info)
    benchmark.extra_info.update(model=name, backend=backend, median_ms=ms, steps_per_s=1e3 / ms,
                                images_per_s=shape[0] * 1e3 / ms)
