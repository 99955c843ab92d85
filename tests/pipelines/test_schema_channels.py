"""A channel schema of another size (the README supports any) goes through the whole pipeline."""

import json

import dagster as dg
import pytest

from loc2vec.evaluation.similar import similar_places
from loc2vec.evaluation.stage import load_index_manifest
from loc2vec.models.encoders import load_encoder
from loc2vec.schema import load_schema
from pipelines.definitions import build_definitions
from pipelines.runner import run_pipeline
from resources import OsmSource, ProjectStorage
from tests.conftest import MONACO, TRAIN_REGION
from tests.pipelines.test_training_assets import _config


@pytest.mark.slow
def test_a_ten_channel_schema_trains_embeds_and_answers_similar(tmp_path):
    default = json.loads(load_schema(None).to_json())
    ten = {**default, "name": "ten", "channels": [c for c in default["channels"] if c["name"] not in
                                                  ("leisure", "power_boundaries")]}  # fmt: skip
    schema_path = tmp_path / "ten.json"
    schema_path.write_text(json.dumps(ten))
    osm = OsmSource(pbf_path=str(MONACO), bbox=",".join(map(str, TRAIN_REGION)), schema_path=str(schema_path))
    defs = build_definitions(osm, ProjectStorage(data_dir=str(tmp_path / "data")))
    with dg.instance_for_test() as instance:
        results = run_pipeline(defs, instance, run_config=_config(epochs=1), log=lambda _: None)
    model = results["main_job"].output_for_node("trained_model")
    assert load_encoder(model.weights_path).spec.in_channels == 10
    embeddings = results["main_job"].output_for_node("embeddings")
    assert embeddings.dim == model.representation_dim
    current = (tmp_path / "data" / "index" / "CURRENT").read_text().strip()
    found = similar_places(load_index_manifest(current), 43.7384, 7.4246, k=3)
    assert len(found) == 3 and (found["embedding_distance"] >= 0).all()
