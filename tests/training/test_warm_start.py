"""training.init_from: scratch, a checkpoint file, and the registry's champion (continuous
training), with the errors a wrong source gets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from depth_common.config import Params
from depth_common.errors import ConfigError
from depth_common.model.checkpoint import load_checkpoint
from depth_common.registry.aliases import registry_client
from depth_common.training.train import train


def _params(tiny_params: Params, tmp_path: Path, *extra: str) -> Params:
    return tiny_params.with_overrides(
        [f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "training.epochs=0", *extra]
    )


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model_state"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _tags(params: Params, run_id: str) -> dict[str, str]:
    return registry_client(params.mlflow.tracking_uri).get_run(run_id).data.tags


@pytest.fixture(scope="module")
def trained(processed_data, tiny_params, tmp_path_factory) -> Path:
    """A checkpoint whose weights differ from any fresh initialisation (one short epoch)."""
    out = tmp_path_factory.mktemp("trained")
    params = tiny_params.with_overrides(
        ["training.epochs=1", "training.max_train_batches=2", "training.seed=7"]
    )
    return train(params, processed_data, out, tracking=False).checkpoint_path


def test_a_checkpoint_file_is_where_training_starts(
    processed_data, tiny_params, trained, tmp_path
) -> None:
    scratch = _params(tiny_params, tmp_path, "training.init_from=''")
    fresh = train(scratch, processed_data, tmp_path / "a")
    assert not _same(_weights(fresh.checkpoint_path), _weights(trained))
    params = _params(tiny_params, tmp_path, f"training.init_from='{trained}'")
    started = train(params, processed_data, tmp_path / "b")
    # epochs = 0 saves the initial model: exactly the weights of the file it started from
    assert _same(_weights(started.checkpoint_path), _weights(trained))
    assert _tags(params, started.mlflow_run_id)["init_from"] == str(trained)
    assert _tags(params, fresh.mlflow_run_id)["init_from"] == "scratch"


def test_the_champion_is_fine_tuned_and_no_champion_means_scratch(
    processed_data, tiny_params, tmp_path
) -> None:
    params = _params(tiny_params, tmp_path, "training.init_from=champion")
    # No store yet: no champion, and the look does not create one.
    no_store = params.with_overrides([f"mlflow.tracking_uri=sqlite:///{tmp_path}/none.db"])
    train(no_store, processed_data, tmp_path / "zero", tracking=False)
    assert not (tmp_path / "none.db").exists()
    first = train(params, processed_data, tmp_path / "first")  # nothing registered yet
    assert _tags(params, first.mlflow_run_id)["init_from"] == "scratch (no champion yet)"

    # The first run becomes the champion (what register + deploy do), from its logged best.pt.
    client = registry_client(params.mlflow.tracking_uri)  # registry on the same store
    name = params.mlflow.model_name
    client.create_registered_model(name)
    version = client.create_model_version(
        name, f"runs:/{first.mlflow_run_id}/model", first.mlflow_run_id
    )
    client.set_registered_model_alias(name, "champion", version.version)

    other_seed = params.with_overrides(["training.seed=123"])  # a fresh start would differ
    second = train(other_seed, processed_data, tmp_path / "second")
    assert _same(_weights(second.checkpoint_path), _weights(first.checkpoint_path))
    tag = _tags(params, second.mlflow_run_id)["init_from"]
    assert tag == f"champion {name} v{version.version} (run {first.mlflow_run_id})"


def test_a_wrong_source_is_a_clear_error(processed_data, tiny_params, trained, tmp_path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(ConfigError, match=r"training\.init_from: got .*nope\.pt.*no such file"):
        train(_params(tiny_params, tmp_path, f"training.init_from='{missing}'"), processed_data,
              tmp_path / "a", tracking=False)  # fmt: skip
    other_model = _params(
        tiny_params, tmp_path, "model.decoder_features=32", f"training.init_from='{trained}'"
    )
    with pytest.raises(ConfigError, match=r"holds model .*decoder_features.*same model"):
        train(other_model, processed_data, tmp_path / "b", tracking=False)
    assert not (tmp_path / "b" / "best.pt").exists()
