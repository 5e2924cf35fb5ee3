"""crossentropy.keras: Keras-convention losses checked against the core, torch and Keras's own losses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

import crossentropy  # noqa: E402
from crossentropy.keras import (  # noqa: E402
    SparseCategoricalCrossentropy,
    SparseCategoricalFocalCrossentropy,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

IGNORE = -100
# Keras's reduction of a masked loss builds its mask weights in float32 even for float64 losses
# (keras.src.losses.loss.apply_mask), so reduced float64 values agree to ~1e-7 only; per-position
# values (reduction=None) are compared to 1e-10.
REDUCED_RTOL = 1e-6


def _np(x: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float64)


def _data(
    seed: int, shape: tuple[int, ...], classes: int, ignore_frac: float = 0.25
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(*shape, classes))
    labels = rng.integers(0, classes, size=shape)
    labels[rng.random(shape) < ignore_frac] = IGNORE
    labels.flat[0] = 0  # at least one counted position
    return logits, labels


# Odd class counts and ranks: (batch,) rows, (batch, time) sequences, a single row.
SHAPES = [((7,), 5), ((3, 4), 11), ((1,), 2), ((2, 3, 5), 3)]


@pytest.mark.parametrize(("shape", "classes"), SHAPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
def test_sparse_ce_matches_core_and_torch(
    shape: tuple[int, ...], classes: int, smoothing: float
) -> None:
    logits, labels = _data(len(shape) * 10 + classes, shape, classes)
    loss = SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=IGNORE, label_smoothing=smoothing, dtype="float64"
    )
    got = _np(loss(labels, logits))
    core = crossentropy.softmax_cross_entropy(
        logits, labels, ignore_index=IGNORE, label_smoothing=smoothing
    )
    ref = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits.reshape(-1, classes)),
        torch.from_numpy(labels.reshape(-1)),
        ignore_index=IGNORE,
        label_smoothing=smoothing,
    )
    np.testing.assert_allclose(got, float(ref), rtol=REDUCED_RTOL)
    np.testing.assert_allclose(got, np.asarray(core, dtype=np.float64), rtol=REDUCED_RTOL)
    per_position = SparseCategoricalCrossentropy(
        from_logits=True,
        ignore_class=IGNORE,
        label_smoothing=smoothing,
        dtype="float64",
        reduction=None,
    )
    core_none = crossentropy.softmax_cross_entropy(
        logits, labels, ignore_index=IGNORE, label_smoothing=smoothing, reduction="none"
    )
    np.testing.assert_allclose(
        _np(per_position(labels, logits)),
        np.asarray(core_none, dtype=np.float64),
        rtol=1e-10,
        atol=1e-12,
    )


def test_per_position_losses_and_class_axis() -> None:
    # reduction=None gives one value per position, 0 where ignored; axis=1 (channels first) works.
    logits, labels = _data(3, (2, 6), 4)
    channels_first = np.moveaxis(logits, -1, 1)
    loss = SparseCategoricalCrossentropy(
        from_logits=True,
        ignore_class=IGNORE,
        label_smoothing=0.2,
        axis=1,
        reduction=None,
        dtype="float64",
    )
    got = _np(loss(labels, channels_first))
    want = crossentropy.softmax_cross_entropy(
        logits, labels, ignore_index=IGNORE, label_smoothing=0.2, reduction="none"
    )
    assert got.shape == labels.shape
    np.testing.assert_allclose(got, np.asarray(want, dtype=np.float64), rtol=1e-10, atol=1e-12)
    assert np.all(got[labels == IGNORE] == 0.0)


@pytest.mark.parametrize("from_logits", [True, False])
def test_sparse_ce_matches_keras_with_ignore_class(from_logits: bool) -> None:
    logits, labels = _data(5, (4, 9), 6)
    labels[labels == IGNORE] = 5  # Keras's ignore_class must be a class id for its own loss
    y_pred = logits if from_logits else _np(keras.ops.softmax(logits, axis=-1))
    ours = SparseCategoricalCrossentropy(from_logits=from_logits, ignore_class=5)
    theirs = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits, ignore_class=5)
    weights = np.random.default_rng(1).random((4, 9))
    np.testing.assert_allclose(_np(ours(labels, y_pred)), _np(theirs(labels, y_pred)), rtol=1e-5)
    np.testing.assert_allclose(
        _np(ours(labels, y_pred, sample_weight=weights)),
        _np(theirs(labels, y_pred, sample_weight=weights)),
        rtol=1e-5,
    )


@pytest.mark.parametrize("from_logits", [True, False])
def test_label_smoothing_matches_keras_categorical(from_logits: bool) -> None:
    logits, labels = _data(6, (12,), 7, ignore_frac=0.0)
    onehot = np.eye(7)[labels]
    y_pred = logits if from_logits else _np(keras.ops.softmax(logits, axis=-1))
    ours = SparseCategoricalCrossentropy(from_logits=from_logits, label_smoothing=0.3)
    theirs = keras.losses.CategoricalCrossentropy(from_logits=from_logits, label_smoothing=0.3)
    np.testing.assert_allclose(_np(ours(labels, y_pred)), _np(theirs(onehot, y_pred)), rtol=1e-5)


def test_z_loss_adds_mean_squared_logsumexp() -> None:
    logits, labels = _data(8, (5, 3), 9)
    valid = labels != IGNORE
    lse = np.log(np.exp(logits).sum(-1))
    ce = crossentropy.softmax_cross_entropy(
        logits, labels, ignore_index=IGNORE, label_smoothing=0.1
    )
    want = float(ce) + 1e-2 * float((lse[valid] ** 2).mean())
    loss = SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=IGNORE, label_smoothing=0.1, z_loss=1e-2, dtype="float64"
    )
    np.testing.assert_allclose(_np(loss(labels, logits)), want, rtol=REDUCED_RTOL)


def test_gradients_match_torch_with_random_upstream() -> None:
    # reduction="sum" keeps Keras's masked reduction in float64 (see REDUCED_RTOL).
    logits, labels = _data(9, (6, 5), 13)
    x = torch.tensor(logits, requires_grad=True)
    loss = SparseCategoricalCrossentropy(
        from_logits=True,
        ignore_class=IGNORE,
        label_smoothing=0.15,
        z_loss=1e-3,
        dtype="float64",
        reduction="sum",
    )
    upstream = float(np.random.default_rng(2).normal()) * 2.0
    (loss(torch.from_numpy(labels), x) * upstream).backward()
    y = torch.tensor(logits, requires_grad=True)
    flat, target = y.reshape(-1, 13), torch.from_numpy(labels.reshape(-1))
    valid = target != IGNORE
    ref = (
        torch.nn.functional.cross_entropy(
            flat, target, ignore_index=IGNORE, label_smoothing=0.15, reduction="sum"
        )
        + 1e-3 * (torch.logsumexp(flat, -1)[valid] ** 2).sum()
    )
    (ref * upstream).backward()
    assert x.grad is not None and y.grad is not None
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-10, atol=1e-12)
    assert torch.all(x.grad[torch.from_numpy(labels == IGNORE)] == 0)


# ---------------------------------------------------------------- focal


@pytest.mark.parametrize(("shape", "classes"), SHAPES)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_matches_core(shape: tuple[int, ...], classes: int, gamma: float) -> None:
    logits, labels = _data(classes + int(gamma * 10), shape, classes)
    ours = SparseCategoricalFocalCrossentropy(
        alpha=None, gamma=gamma, from_logits=True, ignore_class=IGNORE, dtype="float64"
    )
    want = crossentropy.focal_loss(logits, labels, gamma=gamma, ignore_index=IGNORE)
    np.testing.assert_allclose(_np(ours(labels, logits)), float(want), rtol=REDUCED_RTOL)
    ours_none = SparseCategoricalFocalCrossentropy(
        alpha=None,
        gamma=gamma,
        from_logits=True,
        ignore_class=IGNORE,
        dtype="float64",
        reduction=None,
    )
    want_none = crossentropy.focal_loss(
        logits, labels, gamma=gamma, ignore_index=IGNORE, reduction="none"
    )
    np.testing.assert_allclose(
        _np(ours_none(labels, logits)),
        np.asarray(want_none, dtype=np.float64),
        rtol=1e-10,
        atol=1e-12,
    )
    # Per-class alpha: Keras averages over the counted positions, the core's sum is comparable.
    alpha = np.linspace(0.25, 1.5, classes)
    weighted = SparseCategoricalFocalCrossentropy(
        gamma=gamma, alpha=list(alpha), from_logits=True, ignore_class=IGNORE, dtype="float64"
    )
    n_valid = int((labels != IGNORE).sum())
    core_sum = crossentropy.focal_loss(
        logits, labels, gamma=gamma, alpha=alpha, ignore_index=IGNORE, reduction="sum"
    )
    np.testing.assert_allclose(
        _np(weighted(labels, logits)), float(core_sum) / n_valid, rtol=REDUCED_RTOL
    )


# Keras's focal loss on one-hot targets, over its own options. Logits of scale 3 over at most 7
# classes keep every probability inside Keras's clip [1e-7, 1 - 1e-7], where the two agree.
FOCAL_CASES = [
    {},  # the defaults: alpha=0.25, gamma=2.0, probabilities
    {"from_logits": True},
    {"alpha": 1.0, "gamma": 0.0, "from_logits": True},
    {"alpha": 0.5, "gamma": 0.5, "from_logits": True, "label_smoothing": 0.1},
    {"gamma": 1.5, "label_smoothing": 0.3},
    # Per-class weights exact in float32: Keras multiplies by them as a float32 tensor.
    {"alpha": [0.125, 0.375, 1.0, 2.0, 0.75], "gamma": 2.0, "from_logits": True},
    {"alpha": [0.125, 0.375, 1.0, 2.0, 0.75], "gamma": 3.0, "label_smoothing": 0.2},
    {"from_logits": True, "label_smoothing": 1.0},
]


@pytest.mark.parametrize("options", FOCAL_CASES, ids=lambda o: ",".join(map(str, o.items())))
@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", None])
def test_focal_matches_keras_categorical_focal(options: dict[str, Any], reduction: Any) -> None:
    logits, labels = _data(11, (3, 4), 5, ignore_frac=0.0)
    from_logits = options.get("from_logits", False)
    y_pred = logits if from_logits else _np(keras.ops.softmax(logits, axis=-1))
    onehot = np.eye(5)[labels]
    weights = np.random.default_rng(3).random((3, 4))
    ours = SparseCategoricalFocalCrossentropy(**options, reduction=reduction, dtype="float64")
    theirs = keras.losses.CategoricalFocalCrossentropy(
        **options, reduction=reduction, dtype="float64"
    )
    np.testing.assert_allclose(
        _np(ours(labels, y_pred)), _np(theirs(onehot, y_pred)), rtol=1e-10, atol=1e-14
    )
    np.testing.assert_allclose(
        _np(ours(labels, y_pred, sample_weight=weights)),
        _np(theirs(onehot, y_pred, sample_weight=weights)),
        rtol=1e-10,
        atol=1e-14,
    )


@pytest.mark.parametrize("options", FOCAL_CASES[:5], ids=lambda o: ",".join(map(str, o.items())))
def test_focal_class_axis_matches_keras_on_the_last_axis(options: dict[str, Any]) -> None:
    # Channels-first input with axis=1 gives Keras's values for the same data channels-last.
    # (Not Keras with axis=1 itself: its label smoothing divides by the size of the *last* axis
    # of y_true whatever `axis` says, so with smoothing it mixes up the class count.)
    logits, labels = _data(12, (2, 6), 5, ignore_frac=0.0)
    from_logits = options.get("from_logits", False)
    y_pred = logits if from_logits else _np(keras.ops.softmax(logits, axis=-1))
    ours = SparseCategoricalFocalCrossentropy(**options, axis=1, reduction=None, dtype="float64")
    theirs = keras.losses.CategoricalFocalCrossentropy(**options, reduction=None, dtype="float64")
    np.testing.assert_allclose(
        _np(ours(labels, np.moveaxis(y_pred, -1, 1))),
        _np(theirs(np.eye(5)[labels], y_pred)),
        rtol=1e-10,
        atol=1e-14,
    )


def test_focal_positional_arguments_mean_what_they_mean_in_keras() -> None:
    logits, labels = _data(13, (9,), 5, ignore_frac=0.0)
    onehot = np.eye(5)[labels]
    # alpha, gamma, from_logits, label_smoothing, axis, reduction: Keras's positional order.
    args = (0.625, 1.5, True, 0.25, -1, "sum")  # alpha exact in float32, where Keras keeps it
    ours = SparseCategoricalFocalCrossentropy(*args, dtype="float64")
    theirs = keras.losses.CategoricalFocalCrossentropy(*args, dtype="float64")
    np.testing.assert_allclose(_np(ours(labels, logits)), _np(theirs(onehot, logits)), rtol=1e-10)
    ce = SparseCategoricalCrossentropy(True, 3, None, -1, dtype="float64")
    keras_ce = keras.losses.SparseCategoricalCrossentropy(True, 3, None, -1, dtype="float64")
    np.testing.assert_allclose(_np(ce(labels, logits)), _np(keras_ce(labels, logits)), rtol=1e-10)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (SparseCategoricalFocalCrossentropy, keras.losses.CategoricalFocalCrossentropy),
        (SparseCategoricalCrossentropy, keras.losses.SparseCategoricalCrossentropy),
    ],
    ids=["focal", "ce"],
)
def test_signature_follows_keras(ours: Any, theirs: Any) -> None:
    """Keras's parameters come first, in Keras's order, with Keras's defaults (the name aside);
    our extras (ignore_class, label_smoothing, z_loss) are keyword-only after them."""
    import inspect

    mine = list(inspect.signature(ours).parameters.values())
    keras_params = list(inspect.signature(theirs).parameters.values())
    assert [p.name for p in mine[: len(keras_params)]] == [p.name for p in keras_params]
    for p, k in zip(mine, keras_params):
        assert p.kind == k.kind, p.name
        if p.name != "name":
            assert p.default == k.default, p.name
    extras = mine[len(keras_params) :]
    assert extras and all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in extras)


def test_focal_label_smoothing_with_ignore_class() -> None:
    # ignore_class with smoothing: counted positions equal Keras's loss on them alone.
    logits, labels = _data(14, (12,), 5)
    keep = labels != IGNORE
    options = {"alpha": [0.2, 0.4, 0.6, 0.8, 1.0], "gamma": 1.0, "label_smoothing": 0.25}
    ours = SparseCategoricalFocalCrossentropy(
        **options, from_logits=True, ignore_class=IGNORE, dtype="float64"
    )
    theirs = keras.losses.CategoricalFocalCrossentropy(**options, from_logits=True, dtype="float64")
    want = _np(theirs(np.eye(5)[labels[keep]], logits[keep]))
    np.testing.assert_allclose(_np(ours(labels, logits)), want, rtol=REDUCED_RTOL)


def test_focal_gamma_zero_is_cross_entropy_and_stays_finite() -> None:
    logits, labels = _data(12, (8,), 5)
    logits[0] = [60.0, -60.0, -60.0, -60.0, -60.0]  # p_y = 1 to double precision: (1 - p)^g = 0
    ce = SparseCategoricalCrossentropy(from_logits=True, ignore_class=IGNORE, dtype="float64")
    focal = SparseCategoricalFocalCrossentropy(
        alpha=1.0, gamma=0.0, from_logits=True, ignore_class=IGNORE, dtype="float64"
    )
    np.testing.assert_allclose(_np(focal(labels, logits)), _np(ce(labels, logits)), rtol=1e-12)
    assert np.isfinite(_np(focal(labels, logits)))
    x = torch.tensor(logits, requires_grad=True)
    SparseCategoricalFocalCrossentropy(gamma=2.0, from_logits=True, ignore_class=IGNORE)(
        torch.from_numpy(labels), x
    ).backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())


# ---------------------------------------------------------------- Keras conventions


@pytest.mark.parametrize(
    "loss",
    [
        SparseCategoricalCrossentropy(
            from_logits=True,
            ignore_class=0,
            label_smoothing=0.1,
            z_loss=1e-4,
            axis=1,
            reduction="sum",
            name="ce",
        ),
        SparseCategoricalFocalCrossentropy(
            alpha=[0.5, 1.0, 2.0], gamma=1.0, label_smoothing=0.1, ignore_class=-1
        ),
        SparseCategoricalFocalCrossentropy(alpha=None),
        SparseCategoricalCrossentropy(from_logits=True, dtype="float64"),
        SparseCategoricalFocalCrossentropy(dtype="float64"),
    ],
    ids=["ce", "focal-per-class", "focal-scalar", "ce-float64", "focal-float64"],
)
def test_config_round_trip(loss: Any) -> None:
    config = loss.get_config()
    again = type(loss).from_config(config)
    assert again.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss) and restored.get_config() == config
    assert again.dtype == restored.dtype == loss.dtype


def _fit(loss: Any, tmp_path: Path | None = None) -> list[float]:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=3.0, size=(5, 8))
    labels = rng.integers(0, 5, size=256)
    x = (centers[labels] + rng.normal(size=(256, 8))).astype("float32")
    y = labels.copy()
    y[rng.random(256) < 0.2] = IGNORE  # unlabelled rows
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(5)]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=loss)
    history = model.fit(x, y, batch_size=64, epochs=5, verbose=0)
    if tmp_path is not None:
        # The compiled loss is saved with the model and comes back as our class.
        path = tmp_path / "model.keras"
        model.save(path)
        restored = keras.saving.load_model(path)
        assert type(restored.loss) is type(loss)
        assert restored.loss.get_config() == loss.get_config()
        np.testing.assert_allclose(
            restored.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0), rtol=1e-5
        )
    return [float(v) for v in history.history["loss"]]


def test_fit_decreases_loss_and_saves(tmp_path: Path) -> None:
    assert keras.backend.backend() == "torch"
    losses = _fit(
        SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=IGNORE, label_smoothing=0.1, z_loss=1e-3
        ),
        tmp_path,
    )
    assert losses[-1] < 0.6 * losses[0]


def test_fit_focal_decreases_loss() -> None:
    losses = _fit(
        SparseCategoricalFocalCrossentropy(gamma=2.0, from_logits=True, ignore_class=IGNORE)
    )
    assert losses[-1] < 0.6 * losses[0]


# ---------------------------------------------------------------- bad input


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match=r"label_smoothing must be \[0.0, 1.0\]; got 1.5"):
        SparseCategoricalCrossentropy(label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"z_loss must be >= 0\.0"):
        SparseCategoricalCrossentropy(from_logits=True, z_loss=-1.0)
    with pytest.raises(ValueError, match="z_loss needs logits"):
        SparseCategoricalCrossentropy(z_loss=1e-4)
    with pytest.raises(TypeError, match="ignore_class must be an int"):
        SparseCategoricalCrossentropy(ignore_class=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"gamma must be >= 0\.0"):
        SparseCategoricalFocalCrossentropy(gamma=-1.0)
    with pytest.raises(ValueError, match=r"label_smoothing must be \[0.0, 1.0\]; got -0.1"):
        SparseCategoricalFocalCrossentropy(label_smoothing=-0.1)
    with pytest.raises(TypeError, match="positional"):
        SparseCategoricalCrossentropy(True, None, "sum", -1, "ce", None, 0.1)  # type: ignore[misc]
    with pytest.raises(TypeError, match="alpha must be None, a number or a sequence"):
        SparseCategoricalFocalCrossentropy(alpha="big")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="alpha has 2 per-class weights but y_pred has 3 classes"):
        SparseCategoricalFocalCrossentropy(alpha=[1.0, 2.0], from_logits=True)(
            [0], np.zeros((1, 3))
        )
    with pytest.raises(
        ValueError, match=r"y_true must hold one class index per position, shape \(4,\)"
    ):
        SparseCategoricalCrossentropy(from_logits=True)(np.zeros((4, 2)), np.zeros((4, 3)))


def test_import_crossentropy_does_not_import_keras() -> None:
    src = str(Path(crossentropy.__file__).parents[1])
    code = (
        "import sys, crossentropy; sys.exit(int('keras' in sys.modules or 'torch' in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": src}
    assert subprocess.run([sys.executable, "-c", code], env=env, check=False).returncode == 0


# A finder that makes TensorFlow (or Keras) unimportable, whether or not it is installed here.
_BLOCK = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, _Block())
import crossentropy.keras
"""


@pytest.mark.parametrize("blocked", ["tensorflow", "keras"])
def test_import_without_a_backend_is_one_clear_error(blocked: str, tmp_path: Path) -> None:
    src = str(Path(crossentropy.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": src, "KERAS_HOME": str(tmp_path)}  # no keras.json
    env.pop("KERAS_BACKEND", None)
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCK.format(blocked=blocked)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: crossentropy.keras")
    # One error, its chain cut: no Keras-internal frames, no "During handling" second traceback.
    assert proc.stderr.count("Traceback") == 1
    assert "During handling" not in proc.stderr and "site-packages/keras" not in proc.stderr
    if blocked == "tensorflow":
        assert "KERAS_BACKEND=torch" in last
        assert "KERAS_BACKEND is not set" in last and "tensorflow" in last
    else:
        assert "pip install 'crossentropy[keras]'" in last


def test_import_names_the_backend_that_was_asked_for(tmp_path: Path) -> None:
    src = str(Path(crossentropy.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": src, "KERAS_HOME": str(tmp_path), "KERAS_BACKEND": "jax"}
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCK.format(blocked="jax")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1
    assert "KERAS_BACKEND=jax" in last and "KERAS_BACKEND=torch" in last
