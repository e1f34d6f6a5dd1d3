"""Shared fixtures: the digits splits and the trained demo pairs, built once per test session."""

import pytest
import torch

torch.set_num_threads(1)  # tiny tensors: one thread is as fast, and immune to a busy machine


@pytest.fixture(scope="session")
def digits():
    from clafusion_core.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def mlp_pair():
    """The default demo pair: mlp:400-200-100-50-25 (A) and mlp:400-200-100 (B), trained on digits."""
    from clafusion_core.zoo import load_demo_pair

    return load_demo_pair("mlp")


@pytest.fixture(scope="session")
def same_shape_pair():
    """Two mlp:400-200-100 trained from different seeds."""
    from clafusion_core.zoo import load_demo_pair

    return load_demo_pair("mlp-same")
