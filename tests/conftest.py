import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    # Two xdist workers on two cores: one intra-op thread each avoids oversubscription.
    torch.set_num_threads(1)
    yield
