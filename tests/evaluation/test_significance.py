"""The model's lead over a baseline and its bootstrap interval, on real protocol points (central Monaco)."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from loc2vec.evaluation.embedders import channel_stats, random_vectors
from loc2vec.evaluation.metrics import score_with_outcomes
from loc2vec.evaluation.significance import LEAD_METRICS, _weighted_auc, leads, outcomes

RADII = {"r_pos": 60.0, "r_neg": 300.0, "exclude_m": 300.0}


@pytest.fixture(scope="module")
def embeddings(monaco_points):
    """Channel statistics (informative about land use) and seeded noise of the protocol's points."""
    points, reader, crop_px = monaco_points
    return {
        "cs": channel_stats(reader, points[["x", "y"]].to_numpy(), crop_px).astype(np.float64),
        "noise": random_vectors(len(points), 16, seed=0).astype(np.float64),
    }


@pytest.fixture(scope="module")
def scored(monaco_points, embeddings):
    points = monaco_points[0]
    return {name: score_with_outcomes(emb, points, **RADII) for name, emb in embeddings.items()}


def test_the_outcomes_give_back_the_metrics_they_came_from(scored):
    for metrics, raw in scored.values():
        for metric, measured in outcomes(raw).items():
            assert measured is not None, metric
            assert measured.of(np.ones((1, measured.n)))[0] == pytest.approx(metrics[metric], abs=1e-6), metric


def test_weighted_auc_is_the_auc_of_the_resampled_examples_with_ties():
    rng = np.random.default_rng(0)
    score = np.round(rng.random(300), 1)  # ten values: many ties
    positive = rng.random(300) < score  # informative
    drawn = rng.integers(0, 300, 300)
    weights = np.bincount(drawn, minlength=300)[None, :].astype(np.float32)
    assert _weighted_auc(weights, positive, score)[0] == pytest.approx(roc_auc_score(positive[drawn], score[drawn]))


def test_a_clear_lead_has_an_interval_above_zero_and_no_lead_an_interval_at_zero(scored):
    (cs_metrics, cs_raw), (noise_metrics, noise_raw) = scored["cs"], scored["noise"]
    cs, noise = outcomes(cs_raw), outcomes(noise_raw)
    clear = leads(cs, {"noise": noise, "itself": cs}, seed=0)
    for metric in LEAD_METRICS:
        lead = clear["noise"][metric]
        assert lead["lead"] == pytest.approx(cs_metrics[metric] - noise_metrics[metric], abs=1e-6)
        assert 0 < lead["low"] < lead["lead"] < lead["high"], (metric, lead)
        assert clear["itself"][metric] == {"lead": 0.0, "low": 0.0, "high": 0.0}
    assert leads(cs, {"noise": noise}, seed=0) == {"noise": clear["noise"]}  # seeded: the same draws
    reversed_ = leads(noise, {"cs": cs}, seed=0)["cs"]["landuse_probe_macro_f1"]
    assert reversed_["high"] < 0


def test_a_metric_without_value_has_no_lead_and_other_test_examples_are_refused(scored):
    _, cs_raw = scored["cs"]
    cs = outcomes(cs_raw)
    without_probe = outcomes({**cs_raw, "landuse_probe_macro_f1": None})
    assert leads(cs, {"b": without_probe})["b"]["landuse_probe_macro_f1"] is None
    agreement, labels = cs_raw["landuse_balanced_recall_at_10"]
    fewer = outcomes({**cs_raw, "landuse_balanced_recall_at_10": (agreement[:-5], labels[:-5])})
    with pytest.raises(ValueError, match="other test examples"):
        leads(cs, {"fewer": fewer})


def test_the_summary_prints_each_lead_with_its_interval(scored):
    from pipelines.summary import lead_lines

    (_, cs_raw), (_, noise_raw) = scored["cs"], scored["noise"]
    document = {"leads": leads(outcomes(cs_raw), {"untrained": outcomes(noise_raw)}, seed=0)}
    document["leads"]["untrained"]["poi_presence_macro_auc"] = None
    header, columns, *rows = lead_lines(document)
    assert "95%" in header and columns.split() == ["over", "untrained"]
    lead = document["leads"]["untrained"]["landuse_balanced_recall_at_10"]
    assert rows[0].split() == [
        "landuse_balanced_recall_at_10",
        f"{lead['lead']:+.3f}",
        f"[{lead['low']:+.3f},",
        f"{lead['high']:+.3f}]",
    ]
    assert rows[2].split() == ["poi_presence_macro_auc", "n/a"]
    assert lead_lines({"model": {}}) == []  # a document of several runs has none


def test_scored_with_leads_scores_every_embedding_and_leads_only_over_those_asked(monaco_points, embeddings, scored):
    from loc2vec.evaluation.run import scored_with_leads

    others = {"noise": embeddings["noise"], "itself": embeddings["cs"]}
    model, metrics, lead = scored_with_leads(
        embeddings["cs"], others, monaco_points[0], RADII, seed=0, lead_over=("noise",)
    )
    # the fixture scored with every thread: trustworthiness' rank ties may differ in the last digits
    assert model == pytest.approx(scored["cs"][0], abs=1e-3)
    assert metrics == {"noise": pytest.approx(scored["noise"][0], abs=1e-3), "itself": pytest.approx(model)}
    assert set(lead) == {"noise"}
    assert lead == leads(outcomes(scored["cs"][1]), {"noise": outcomes(scored["noise"][1])}, seed=0)
