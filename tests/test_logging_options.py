"""kohya_ss's logging options: the tracker's project and run names, its extra arguments, the logged settings,
and logging to every tracker at once."""
import importlib.util

from tests.effects_runs import demo_values, run_demo
from trainer.spec import check_job, job_from_values, validate_values
from trainer.tracking import tensorboard_dir, tracker_names, wandb_init_kwargs


def test_tensorboard_uses_the_tracker_name_and_logs_the_config(demo_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tmp_path / "trackers.toml"
    config.write_text('[tensorboard]\nfilename_suffix = ".loom"\n', encoding="utf-8")
    run = run_demo(demo_dir, tmp_path, max_train_steps=1, logging_dir=str(tmp_path / "tb"), log_tracker_name="shapes",
                   log_config=True, log_tracker_config=str(config))
    (event_file,) = (tmp_path / "tb").rglob("events.out.tfevents.*")
    assert event_file.parent == tmp_path / "tb" / run.run_dir.name / "shapes" and event_file.name.endswith(".loom")
    logged = EventAccumulator(str(event_file.parent)).Reload()
    assert "config/text_summary" in logged.Tags()["tensors"]


def test_wandb_arguments_come_from_the_settings_and_the_tracker_config(tmp_path):
    job = job_from_values({"output_name": "shapes"})
    assert wandb_init_kwargs(job) == {"project": "lora-loom", "name": "shapes"}
    config = tmp_path / "trackers.toml"
    config.write_text('[wandb]\nentity = "me"\ntags = ["a"]\n', encoding="utf-8")
    job = job_from_values({"wandb_run_name": "run 1", "log_tracker_name": "proj", "log_config": True,
                           "log_tracker_config": str(config), "wandb_api_key": "secret"})
    kwargs = wandb_init_kwargs(job)
    assert (kwargs["project"], kwargs["name"], kwargs["entity"], kwargs["tags"]) == ("proj", "run 1", "me", ["a"])
    assert kwargs["config"]["wandb_run_name"] == "run 1" and "wandb_api_key" not in kwargs["config"]
    assert tracker_names(job_from_values({"log_with": "all"})) == ["tensorboard", "wandb"]
    assert tensorboard_dir(job_from_values({}), tmp_path / "run1") == tmp_path / "run1" / "logs" / "run1"


def test_bad_tracker_settings_are_named(demo_dir, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("entity = 3\n", encoding="utf-8")
    keyed = tmp_path / "keyed.toml"
    keyed.write_text('[wandb]\napi_key = "x"\n', encoding="utf-8")
    broken = tmp_path / "broken.toml"
    broken.write_text("[wandb\n", encoding="utf-8")
    for path, words in ((bad, "expected [tensorboard]"), (keyed, "API key"), (broken, "not valid TOML"),
                        (tmp_path / "missing.toml", "cannot read")):
        _, problems = validate_values({"log_tracker_config": str(path)}, for_training=False)
        assert any(p.setting == "log_tracker_config" and words in p.message for p in problems), path
    problems = check_job(job_from_values(demo_values(demo_dir, tmp_path, log_with="all")), for_training=False)
    assert any(p.setting == "log_with" for p in problems) != (importlib.util.find_spec("wandb") is not None)
    _, problems = validate_values({"log_with": "neptune"}, for_training=False)
    assert "log_with" in {p.setting for p in problems}
