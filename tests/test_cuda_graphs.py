"""A whole ST-FCN training step (forward, loss, backward, SGD step) captured in a CUDA graph, by
hand with ``torch.cuda.CUDAGraph`` and by ``torch.compile(mode="reduce-overhead")``, against the
same steps run eagerly: the graph removes the per-call host cost that the eager path can only
shrink (README, "Host cost per call"). GPU only (``bench/run_gpu.sh tests``)."""
import copy

import pytest
import torch
import torch.nn.functional as F

from stn_triton.models import mnist

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

BATCH, STEPS = 64, 4


def _model_and_batches():
    torch.manual_seed(0)
    model = mnist.build("st-fcn", transform="affine").cuda()
    batches = [(torch.rand(BATCH, 1, 28, 28, device="cuda"), torch.randint(0, 10, (BATCH,), device="cuda"))
               for _ in range(3 + STEPS)]
    return model, batches


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def _eager_step(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.detach()


def _assert_same_parameters(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_st_fcn_training_step_in_a_cuda_graph_matches_eager():
    model, batches = _model_and_batches()
    graphed, eager = model, copy.deepcopy(model)
    opt_g, opt_e = _sgd(graphed), _sgd(eager)
    static_x, static_y = batches[0][0].clone(), batches[0][1].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream (allocations, momentum buffers, JIT)
        for x, y in batches[:3]:
            static_x.copy_(x)
            static_y.copy_(y)
            _eager_step(graphed, opt_g, static_x, static_y)
    torch.cuda.current_stream().wait_stream(side)
    for x, y in batches[:3]:
        _eager_step(eager, opt_e, x, y)
    graph = torch.cuda.CUDAGraph()
    opt_g.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = F.cross_entropy(graphed(static_x), static_y)
        static_loss.backward()
        opt_g.step()
    for x, y in batches[3:]:
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        loss_e = _eager_step(eager, opt_e, x, y)
        torch.testing.assert_close(static_loss, loss_e, rtol=1e-4, atol=1e-5)
    torch.cuda.synchronize()
    _assert_same_parameters(graphed, eager)


def test_st_fcn_training_step_compiled_reduce_overhead_matches_eager():
    model, batches = _model_and_batches()
    compiled_model, eager = model, copy.deepcopy(model)
    opt_c, opt_e = _sgd(compiled_model), _sgd(eager)
    torch._dynamo.reset()
    loss_fn = torch.compile(lambda x, y: F.cross_entropy(compiled_model(x), y), mode="reduce-overhead", fullgraph=True)
    for x, y in batches:
        opt_c.zero_grad(set_to_none=True)
        loss_c = loss_fn(x, y)
        loss_c.backward()
        opt_c.step()
        loss_e = _eager_step(eager, opt_e, x, y)
        torch.testing.assert_close(loss_c.detach().clone(), loss_e, rtol=1e-4, atol=1e-5)
    torch.cuda.synchronize()
    _assert_same_parameters(compiled_model, eager)
