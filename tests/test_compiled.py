"""The compiled path (edlcm_ext.loss.compiled): the torch.func input gradients against autograd written
here, HvpCurvatureLoss(compiled=...) against edlcm_ext.loss.reference, every method and the trainer
against their eager selves. Compiling with Inductor takes minutes on 2 CPU cores, so most tests
compile with backend="aot_eager": that traces the step with Dynamo and differentiates it once with
AOTAutograd (where double backward would be refused) and runs the graph eagerly; one test runs
Inductor's generated code."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import CUDA_SKIP_REASON, batch, ensemble, parameter_grads, train_edlcm
from torch._dynamo.utils import counters

from edlcm_ext import HvpCurvatureLoss
from edlcm_ext.loss import compiled
from edlcm_ext.loss.first_order import FirstOrderCurvatureLoss
from edlcm_ext.loss.reference import edlcm_terms
from edlcm_ext.models import build_model
from edlcm_ext.models.ensemble import Ensemble
from edlcm_ext.training.methods import METHODS, build_method

pytestmark = pytest.mark.skipif(
    not torch._dynamo.is_dynamo_supported(), reason="torch.compile is not supported with this Python and torch"
)
TRACE_ONLY = {"backend": "aot_eager"}


@pytest.fixture(autouse=True)
def fresh_compiler():
    """Each test compiles from scratch (no cache entry of an earlier test, no recompile limit hit,
    which would fall back to eager silently) and then checks what Dynamo did."""
    torch._dynamo.reset()
    counters.clear()
    yield


def assert_compiled_whole():
    """Dynamo compiled at least one graph and broke none: what ran was compiled, not eager."""
    assert counters["stats"]["unique_graphs"] > 0
    assert not counters["graph_break"], dict(counters["graph_break"])


def state(models):
    return [copy.deepcopy(m.state_dict()) for m in models]


def assert_states_equal(models, expected):
    for model, reference in zip(models, expected, strict=True):
        for key, value in model.state_dict().items():
            torch.testing.assert_close(value, reference.state_dict()[key], rtol=1e-12, atol=1e-14)


def assert_close_all(ours, expected, rtol=1e-10):
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * max(1.0, b.abs().max().item()))


def assert_matches_reference(models, loss: HvpCurvatureLoss, rtol=1e-10):
    """loss.terms on ``models`` against edlcm_ext.loss.reference on a copy of them, float64: the terms, the
    parameter gradients and the BatchNorm running statistics."""
    twin = copy.deepcopy(models)
    x, y = batch()
    terms = loss.terms(models, x, y)
    expected = edlcm_terms(twin, x, y, loss.alpha, loss.beta, loss.h, loss.reduction, loss.max_ratio)
    for name in ("ece", "l_r", "l_g", "total", "alpha_applied"):
        torch.testing.assert_close(getattr(terms, name), getattr(expected, name), rtol=rtol, atol=1e-14)
    assert_close_all(
        parameter_grads(models, terms.ece + terms.total), parameter_grads(twin, expected.ece + expected.total), rtol
    )
    assert_states_equal(models, twin)


def test_functional_input_gradient_differences_match_double_backprop_written_here():
    """u and L_ece, and the parameter gradient of |u|^2, from torch.func equal create_graph autograd."""
    models = ensemble(members=2)
    twin = copy.deepcopy(models)
    x, y = batch()
    h = 0.3
    u, ece, correct = compiled.functional_input_gradient_differences(models, x, y, h)
    rows, expected_ece = [], 0.0
    for model in twin:
        x0 = x.clone().requires_grad_(True)
        ce = F.cross_entropy(model(x0), y, reduction="sum")
        (g0,) = torch.autograd.grad(ce, x0, create_graph=True)
        sign = g0.detach().sign()
        x1 = (x + h * sign / sign.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).requires_grad_(True)
        (g1,) = torch.autograd.grad(F.cross_entropy(model(x1), y, reduction="sum"), x1, create_graph=True)
        rows.append((g1 - g0).flatten(1))
        expected_ece = expected_ece + ce / x.shape[0]
    expected_u = torch.stack(rows)
    torch.testing.assert_close(u, expected_u, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ece, expected_ece, rtol=1e-12, atol=0)
    assert_close_all(parameter_grads(models, u.pow(2).sum()), parameter_grads(twin, expected_u.pow(2).sum()))
    assert_states_equal(models, twin)  # the running statistics took the same two updates per member


@pytest.mark.parametrize(
    "options",
    [{}, {"reduction": "mean", "max_ratio": None, "h": 0.3}, {"max_ratio": 1e-3}],
    ids=["defaults", "paper_literal", "cap_engaged"],
)
@pytest.mark.parametrize("train_mode", [True, False], ids=["train", "eval"])
def test_compiled_loss_matches_the_reference(options, train_mode):
    """Terms, parameter gradients and BatchNorm running statistics of the compiled loss against
    edlcm_ext.loss.reference, float64."""
    assert_matches_reference(
        [m.train(train_mode) for m in ensemble()], HvpCurvatureLoss(every=1, compiled=TRACE_ONLY, **options)
    )
    assert_compiled_whole()


@pytest.mark.parametrize("options", [{"every": 2}, {"every": 3}], ids=["every2", "every3"])
def test_compiled_amortized_options_follow_the_eager_schedule(options):
    """Three training calls: the same losses and gradients as the eager loss, call by call (the
    schedule stays in Python; skipped calls run the compiled cross-entropy)."""
    models = ensemble()
    twin = copy.deepcopy(models)
    eager, fast = HvpCurvatureLoss(**options), HvpCurvatureLoss(compiled=TRACE_ONLY, **options)
    for _ in range(3):
        x, y = batch()
        ours = fast.terms(models, x, y)
        theirs = eager.terms(twin, x, y)
        assert ours.applied == theirs.applied
        torch.testing.assert_close(ours.ece + ours.total, theirs.ece + theirs.total, rtol=1e-10, atol=1e-14)
        assert_close_all(
            parameter_grads(models, ours.ece + ours.total), parameter_grads(twin, theirs.ece + theirs.total)
        )
    assert fast.state_dict() == eager.state_dict()
    assert_compiled_whole()


class DataDependentMember(torch.nn.Module):
    """A member Dynamo cannot trace whole: a Python branch on a tensor's value (a graph break)."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
        self.head = torch.nn.Linear(4, 5)

    def forward(self, x):
        features = self.body(x)
        if features.sum().item() >= 0:  # always true after ReLU; Dynamo must leave the graph to know
            features = features * 2.0
        return self.head(features.mean(dim=(2, 3)))


def test_a_member_dynamo_cannot_trace_falls_back_to_correct_eager_pieces():
    """The documented fallback: a graph break in a member costs the speed-up, not correctness."""
    assert_matches_reference(
        [DataDependentMember().double() for _ in range(2)], HvpCurvatureLoss(every=1, compiled=TRACE_ONLY)
    )
    assert counters["graph_break"]  # the fallback did happen


def test_inductor_compiled_loss_matches_the_reference():
    """The default switch (Inductor's generated C++ on the CPU), float64."""
    assert_matches_reference(ensemble(members=2), HvpCurvatureLoss(every=1, compiled=True), rtol=1e-9)
    assert_compiled_whole()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_compiled_matches_its_eager_loss(name):
    """Method.use_compiled: the same loss and parameter gradients (input-gradient methods through
    torch.func), float64, on a train-mode small_cnn ensemble."""
    members = [build_model("small_cnn", 5).double().train() for _ in range(3)]
    ours, theirs = Ensemble(members), Ensemble(copy.deepcopy(members))
    x, y = batch(size=4, hw=16)
    method = build_method(name)
    method.use_compiled(TRACE_ONLY)
    torch.manual_seed(1)  # PDD's masks
    loss, logs = method.loss(ours, x, y)
    torch.manual_seed(1)
    expected, _ = build_method(name).loss(theirs, x, y)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-14)
    assert_close_all(parameter_grads(ours.members, loss), parameter_grads(theirs.members, expected))
    assert "ce" in logs
    assert_compiled_whole()


def test_train_with_compile_follows_the_eager_run(tmp_path, monkeypatch):
    """TrainConfig.compile (edlcm train --compile): one epoch of EDLCM logs the same losses as eager."""
    monkeypatch.setitem(compiled.DEFAULT_OPTIONS, "cpu", TRACE_ONLY)
    runs = {flag: train_edlcm(tmp_path / str(flag), compile=flag).history[0] for flag in (False, True)}
    for key in ("loss", "ce", "l_r", "l_g"):
        assert runs[True][key] == pytest.approx(runs[False][key], rel=1e-4), key
    assert_compiled_whole()


def test_compile_switch_errors_name_the_argument():
    with pytest.raises(TypeError, match="compiled must be True, False or a dict"):
        HvpCurvatureLoss(compiled="yes")
    with pytest.raises(ValueError, match="compiled applies to HvpCurvatureLoss's exact path"):
        FirstOrderCurvatureLoss(compiled=True)
    with pytest.raises(ValueError, match="no option compiled"):  # one switch: --compile, not --set
        build_method("edlcm", compiled=True)
    with pytest.raises(TypeError, match="compile must be True, False or a dict"):
        build_method("base").use_compiled("fast")


@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_SKIP_REASON)
def test_cuda_graphed_loss_matches_eager_within_float32_tolerance():
    """On a GPU the default is mode="reduce-overhead" (CUDA graphs): three steps' gradients against
    the eager exact path, float32."""
    models = ensemble(dtype=torch.float32, device="cuda")
    twin = copy.deepcopy(models)
    fast, eager = HvpCurvatureLoss(every=1, compiled=True), HvpCurvatureLoss(every=1)
    for _ in range(3):
        x, y = batch(dtype=torch.float32, device="cuda")
        ours, theirs = fast.terms(models, x, y), eager.terms(twin, x, y)
        torch.testing.assert_close(ours.ece + ours.total, theirs.ece + theirs.total, rtol=1e-4, atol=1e-5)
        assert_close_all(
            parameter_grads(models, ours.ece + ours.total), parameter_grads(twin, theirs.ece + theirs.total), 1e-3
        )
