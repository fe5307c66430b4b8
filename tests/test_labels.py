from tuneddml.results.labels import format_value, short_names, trial_index, trial_label

SEARCHED = ["loss", "loss.lambda", "loss.temperature", "loss.pos_margin", "batch_size"]


def test_label_names_the_loss_and_each_searched_setting_the_trial_has():
    config = {"loss": "supcon", "loss.lambda": 0.5, "loss.temperature": 0.1, "batch_size": 64, "epochs": 4}
    assert trial_label(config, SEARCHED, 3) == "t03 supcon lambda=0.50 temperature=0.10 batch_size=64"


def test_label_leaves_out_what_is_not_searched_or_absent():
    config = {"loss": "contrastive", "loss.pos_margin": 0.8123, "epochs": 4}
    assert trial_label(config, SEARCHED) == "contrastive pos_margin=0.81"


def test_shared_short_names_keep_the_whole_key():
    assert short_names(["loss.margin", "miner.margin", "loss.lambda"]) == {
        "loss.margin": "loss.margin",
        "miner.margin": "miner.margin",
        "loss.lambda": "lambda",
    }


def test_values_are_short_and_exact_enough():
    assert [format_value(v) for v in (0.5, 0.0123, 64, 250.0, 0.0, True, "nonzero")] == [
        "0.50", "0.0123", "64", "250", "0", "True", "nonzero"
    ]


def test_trial_index_from_rays_experiment_tag():
    assert trial_index("3_loss=supcon,loss.lambda=0.5") == 3
    assert trial_index("") is None and trial_index(None) is None
