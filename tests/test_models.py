"""build_model: families, validation, shapes, parameter matching, fast initialisation and the solver cache."""
from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import equiv
from equiv import GroupError, ModelConfigError, build_model, count_params
from equiv.build_cache import DiskMemo, cache_dir, load_escnn
from equiv.cnn import BlurPool2d, GridAvgPool2d
from equiv.groups import GridElement, parse_group

GROUPS = ["trivial", "flip", "C4", "D4", "C8", "D8", "SO2", "O2"]
SMALL = {"width": 4, "depth": 2, "kernel_size": 3}


# --- validation -------------------------------------------------------------------------------------------------

def test_unknown_family_lists_the_families():
    with pytest.raises(ModelConfigError, match="unknown model family 'resnet'; allowed: cnn, gcnn, unet, gunet"):
        build_model("resnet", "trivial", 3, 2)


@pytest.mark.parametrize("family", ["cnn", "unet"])
def test_plain_families_refuse_a_symmetry_group(family):
    with pytest.raises(ModelConfigError, match=f"family '{family}' has no symmetry: group must be 'trivial', got 'D4'"):
        build_model(family, "D4", 3, 2)


def test_bad_group_is_a_group_error_with_the_valid_forms():
    with pytest.raises(GroupError, match="unknown group 'E4'; valid forms: trivial, flip"):
        build_model("gcnn", "E4", 3, 2)


@pytest.mark.parametrize(
    ("hparams", "message"),
    [
        ({"widht": 8}, "unknown hparam 'widht'; allowed: width, depth, kernel_size, dropout, match, max_frequency, "
                       "pool"),
        ({"kernel_size": 4}, "kernel_size=4 is not allowed; allowed: odd integers >= 1 and <= 15"),
        ({"width": 0}, "width=0 is not allowed; allowed: integers >= 1 and <= 1024"),
        ({"width": 1025}, "width=1025 is not allowed; allowed: integers >= 1 and <= 1024"),
        ({"depth": 2.0}, "depth=2.0 is not allowed; allowed: integers >= 1 and <= 8"),
        ({"dropout": 1.0}, "dropout=1.0 is not allowed; allowed: numbers >= 0 and < 1"),
        ({"match": "flops"}, "match='flops' is not allowed; allowed: 'params' or 'channels'"),
        ({"max_frequency": 0}, "max_frequency=0 is not allowed; allowed: integers >= 1 and <= 16"),
        ({"pool": "max"}, "pool='max' is not allowed; allowed: 'blur' or 'average'"),
    ],
)
def test_bad_hparams_name_the_key_and_the_allowed_values(hparams, message):
    with pytest.raises(ModelConfigError, match=message):
        build_model("gcnn", "C4", 3, 2, **hparams)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ModelConfigError) as error:
        build_model("cnn", "trivial", 0, 2, width=-1, colour="red")
    for part in ("unknown hparam 'colour'", "in_channels=0", "width=-1"):
        assert part in str(error.value)


def test_config_errors_are_value_errors():
    assert issubclass(ModelConfigError, ValueError) and issubclass(GroupError, ValueError)


# --- shapes, groups, parameter counts ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", [96, 64, 33])
@pytest.mark.parametrize("name", ["cnn", "D4", "SO2"])
def test_logits_for_any_input_size(name, size):
    model = build_model("cnn", "trivial", 3, 5, **SMALL) if name == "cnn" else build_model("gcnn", name, 3, 5, **SMALL)
    assert model(torch.randn(2, 3, size, size)).shape == (2, 5)
    assert model.group == parse_group("trivial" if name == "cnn" else name)


def test_defaults_give_a_cpu_sized_cnn():
    assert 50_000 <= count_params(build_model("cnn", "trivial", 3, 2)) <= 200_000


@pytest.mark.parametrize("name", GROUPS)
def test_match_params_is_within_ten_percent_of_the_cnn(name):
    target = count_params(build_model("cnn", "trivial", 3, 2))
    model = build_model("gcnn", name, 3, 2)
    assert abs(count_params(model) - target) <= 0.1 * target, (model.fields, count_params(model), target)


@given(name=st.sampled_from(GROUPS), width=st.integers(8, 16), depth=st.integers(1, 3),
       kernel_size=st.sampled_from([3, 5]))
def test_match_params_for_small_architectures(name, width, depth, kernel_size):
    hparams = {"width": width, "depth": depth, "kernel_size": kernel_size}
    target = count_params(build_model("cnn", "trivial", 3, 2, **hparams))
    model = build_model("gcnn", name, 3, 2, **hparams)
    assert abs(count_params(model) - target) <= 0.1 * target, (model.fields, count_params(model), target)


def test_match_channels_uses_one_field_per_cnn_channel():
    model = build_model("gcnn", "C4", 3, 2, width=4, depth=3, match="channels")
    assert model.fields == (4, 8, 16)
    assert model.stages[-1].out_type.size == 16 * 4


def test_max_frequency_sets_the_fourier_band_limit():
    low = build_model("gcnn", "SO2", 3, 2, max_frequency=1, match="channels", **SMALL)
    high = build_model("gcnn", "SO2", 3, 2, max_frequency=3, match="channels", **SMALL)
    assert low.group.max_frequency == 1 and high.group.max_frequency == 3
    assert low.stages[0].out_type.size == 4 * 3 and high.stages[0].out_type.size == 4 * 7


def test_seeded_builds_are_identical():
    weights = []
    for _ in range(2):
        torch.manual_seed(3)
        weights.append(build_model("gcnn", "D4", 3, 2, **SMALL).state_dict())
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


# --- blur pooling -------------------------------------------------------------------------------------------------

@given(height=st.integers(1, 40), width=st.integers(1, 40), turns=st.integers(0, 3), flip=st.booleans())
def test_blur_pool_commutes_with_grid_elements_at_any_size(height, width, turns, flip):
    if turns % 2 and height != width:
        width = height  # a quarter turn maps an H x W map to W x H; compare square maps only
    pool, element, x = BlurPool2d(), GridElement(turns, flip), torch.randn(2, 3, height, width)
    assert pool(x).shape == (2, 3, (height + 1) // 2, (width + 1) // 2)
    torch.testing.assert_close(pool(element.apply(x)), element.apply(pool(x)), rtol=0, atol=1e-6)


def test_blur_pool_filters_each_channel_alone_with_binomial_taps_chosen_by_parity():
    x = torch.randn(2, 5, 10, 9)
    taps = {10: torch.tensor([1.0, 3, 3, 1]) / 8, 9: torch.tensor([1.0, 2, 1]) / 4}
    kernel = torch.outer(taps[10], taps[9])[None, None]
    expected = torch.cat([F.conv2d(x[:, c:c + 1], kernel, stride=2, padding=1) for c in range(5)], dim=1)
    torch.testing.assert_close(BlurPool2d()(x), expected)
    torch.testing.assert_close(BlurPool2d()(x.contiguous(memory_format=torch.channels_last)), expected)


@given(height=st.integers(1, 40), width=st.integers(1, 40), turns=st.integers(0, 3), flip=st.booleans())
def test_grid_average_pool_commutes_with_grid_elements_at_any_size(height, width, turns, flip):
    if turns % 2 and height != width:
        width = height
    pool, element, x = GridAvgPool2d(), GridElement(turns, flip), torch.randn(2, 3, height, width)
    assert pool(x).shape == (2, 3, (height + 1) // 2, (width + 1) // 2)
    torch.testing.assert_close(pool(element.apply(x)), element.apply(pool(x)), rtol=0, atol=1e-6)


def test_grid_average_pool_is_a_2x2_average_on_even_maps():
    x = torch.randn(2, 3, 8, 6)
    torch.testing.assert_close(GridAvgPool2d()(x), F.avg_pool2d(x, 2))


def test_blur_pool_preserves_constants_away_from_the_border():
    y = BlurPool2d()(torch.ones(1, 1, 12, 12))
    torch.testing.assert_close(y[..., 1:-1, 1:-1], torch.ones(1, 1, 4, 4))


# --- fast initialisation ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", GROUPS)
def test_fast_he_init_equals_escnns(name):
    from escnn.nn.init import _generalized_he_init_variances

    from equiv.groups import gspace
    from equiv.init import he_init_, he_variances

    enn = load_escnn().nn
    group = parse_group(name, max_frequency=2)
    space = gspace(group)
    fibre = space.fibergroup
    if group.continuous:
        kinds = [space.trivial_repr, fibre.bl_regular_representation(2), fibre.irrep(*fibre.bl_irreps(2)[-1])]
    else:
        kinds = [space.trivial_repr, space.regular_repr]
    # Mixed and repeated field types exercise the per-output-irrep fan-in counting.
    in_type = enn.FieldType(space, 2 * kinds[:1] + 3 * kinds[1:2] + kinds[-1:])
    out_type = enn.FieldType(space, 2 * kinds[1:2] + kinds[:1] + 2 * kinds[-1:])
    torch.manual_seed(0)
    reference = enn.R2Conv(in_type, out_type, 5, initialize=True)
    torch.manual_seed(0)
    fast = enn.R2Conv(in_type, out_type, 5, initialize=False)
    he_init_(fast)
    assert torch.equal(he_variances(fast.basisexpansion), _generalized_he_init_variances(fast.basisexpansion))
    assert torch.equal(fast.weights, reference.weights)


# --- solver cache -----------------------------------------------------------------------------------------------

def test_escnn_solvers_are_memoised_under_the_cache_dir():
    import escnn.group._clebsh_gordan as clebsh_gordan

    load_escnn()
    memo = clebsh_gordan._clebsh_gordan_tensor
    assert isinstance(memo, DiskMemo)
    assert memo.path.is_relative_to(cache_dir())


def test_disk_memo_computes_once_and_persists_atomically(tmp_path):
    calls = []

    def square(x, offset=0):
        calls.append(x)
        return [x * x + offset]

    path = tmp_path / "cache" / "square.pkl"
    memo = DiskMemo(square, path)
    assert memo(3) == [9] and memo(3) == [9] and memo(3, offset=1) == [10]
    assert calls == [3, 3]
    memo(3).append("mutated")  # callers get copies
    assert memo(3) == [9]
    memo.save()
    assert [p.name for p in path.parent.iterdir()] == ["square.pkl"]  # no temporary file left behind

    fresh = DiskMemo(square, path)
    assert fresh(3) == [9] and calls == [3, 3]


def test_disk_memo_merges_with_other_writers_and_survives_a_corrupt_file(tmp_path):
    path = tmp_path / "f.pkl"
    first, second = DiskMemo(lambda x: x + 1, path), DiskMemo(lambda x: x + 1, path)
    first(1)
    second(2)
    first.save()
    second.save()
    with path.open("rb") as file:
        assert set(pickle.load(file)) == {((1,), ()), ((2,), ())}
    path.write_bytes(b"not a pickle")
    assert DiskMemo(lambda x: x + 1, path)(5) == 6


def test_unhashable_arguments_bypass_the_memo(tmp_path):
    memo = DiskMemo(lambda xs: sum(xs), tmp_path / "sum.pkl")
    assert memo([1, 2]) == 3 and memo.results == {}


def test_public_api():
    for name in ("build_model", "export_eval", "count_params", "ModelConfigError"):
        assert hasattr(equiv, name)
    from equiv import checks

    for name in ("invariance_errors", "offgrid_errors", "equivariance_errors"):
        assert callable(getattr(checks, name))


# --- inner batch norm without the copy ----------------------------------------------------------------------------

@pytest.mark.parametrize("group", ["flip", "C4", "D4"])
def test_inner_batch_norm_is_escnns_in_outputs_gradients_statistics_and_export(group):
    from equiv.groups import gspace
    from equiv.norm import InnerBatchNorm

    enn = load_escnn().nn
    space = gspace(parse_group(group))
    field_type = enn.FieldType(space, 3 * [space.regular_repr])
    ours, theirs = InnerBatchNorm(field_type), enn.InnerBatchNorm(field_type)
    with torch.no_grad():
        for parameter in ours.parameters():
            parameter.uniform_(0.5, 1.5)
    theirs.load_state_dict(ours.state_dict())  # the same keys, or this raises
    for training in (True, False, True):
        ours.train(training), theirs.train(training)
        x = torch.randn(4, field_type.size, 6, 5)
        inputs = [x.clone().requires_grad_() for _ in range(2)]
        # In-place ReLU after the norm, as in every stage: must not corrupt what backward needs.
        outputs = [m(enn.GeometricTensor(i, field_type)).tensor.relu_() for m, i in zip((ours, theirs), inputs)]
        torch.testing.assert_close(outputs[0], outputs[1])
        for output in outputs:
            (output * torch.arange(output.numel()).view_as(output)).sum().backward()
        torch.testing.assert_close(inputs[0].grad, inputs[1].grad)
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value)
    probe = torch.randn(2, field_type.size, 4, 4)
    torch.testing.assert_close(ours.export()(probe), theirs.export()(probe))
