"""kohya_ss's saving and metadata options: what lands in the LoRA file's metadata, which epoch files and
state folders are kept, the final state, and the one file format LoRA Loom writes."""
from tests.effects_runs import read_lora, run_demo, small_dataset
from trainer.kohya import import_kohya_config
from trainer.saving_extra import epoch_to_prune, state_keep_last
from trainer.spec import validate_values


def test_pruning_rules_follow_sd_scripts():
    assert [epoch_to_prune(e, 2, 1) for e in (1, 2, 3, 4)] == [None, None, 1, 2]
    assert [epoch_to_prune(e, 1, 2) for e in (2, 4, 6)] == [None, 2, 4]
    assert epoch_to_prune(5, 0, 1) is None
    assert (state_keep_last(0, 3), state_keep_last(2, 3)) == (3, 2)


def test_comment_and_model_spec_fields_are_in_the_file(demo_dir, tmp_path):
    run = run_demo(demo_dir, tmp_path, max_train_steps=1, training_comment="trigger: sks shape",
                   metadata_title="Shapes", metadata_author="Loom tests", metadata_description="tiny shapes",
                   metadata_license="CC0", metadata_tags="shapes, test", min_timestep=100, max_timestep=900,
                   loss_type="huber", ip_noise_gamma=0.1, debiased_estimation_loss=True)
    _, meta = read_lora(run.final_file)
    assert meta["ss_training_comment"] == "trigger: sks shape"
    assert (meta["modelspec.title"], meta["modelspec.author"], meta["modelspec.description"]) == (
        "Shapes", "Loom tests", "tiny shapes")
    assert (meta["modelspec.license"], meta["modelspec.tags"]) == ("CC0", "shapes, test")
    assert meta["modelspec.timestep_range"] == "100,900"
    assert (meta["ss_loss_type"], meta["ss_huber_schedule"], meta["ss_ip_noise_gamma"]) == ("huber", "snr", "0.1")
    assert meta["ss_debiased_estimation"] == "True"


def test_blank_metadata_fields_are_left_out_and_the_title_is_the_output_name(demo_dir, tmp_path):
    run = run_demo(demo_dir, tmp_path, max_train_steps=1, output_name="plain")
    _, meta = read_lora(run.final_file)
    assert meta["modelspec.title"] == "plain" and meta["ss_training_comment"] == "None"
    assert not {"modelspec.author", "modelspec.license", "modelspec.tags", "modelspec.timestep_range"} & set(meta)


def test_last_n_epochs_and_the_state_at_train_end(demo_dir, tmp_path):
    data = small_dataset(demo_dir, tmp_path / "data4", images=4)  # 2 steps an epoch
    run = run_demo(demo_dir, tmp_path, train_data_dir=str(data), epoch=3, save_every_n_epochs=1,
                   save_last_n_epochs=1, save_state_on_train_end=True, output_name="ep")
    assert run.output_files() == ["ep-000002.safetensors", "ep-state", "ep.safetensors"]


def test_state_folders_keep_their_own_last_n(demo_dir, tmp_path):
    data = small_dataset(demo_dir, tmp_path / "data4", images=4)  # 2 steps an epoch, 6 in all
    run = run_demo(demo_dir, tmp_path, train_data_dir=str(data), epoch=3, save_every_n_epochs=1,
                   save_every_n_steps=1, save_state=True, save_last_n_steps_state=1, save_last_n_epochs_state=1,
                   output_name="st")
    states = [name for name in run.output_files() if name.endswith("-state")]
    assert states == ["st-000002-state", "st-state", "st-step00000004-state", "st-step00000005-state"]
    files = [name for name in run.output_files() if name.endswith(".safetensors")]
    assert files == ["st-000001.safetensors", "st-000002.safetensors", *(f"st-step{s:08d}.safetensors" for s in
                                                                          range(1, 6)), "st.safetensors"]


def test_bad_saving_values_are_named():
    for values, key, level in (({"save_model_as": "ckpt"}, "save_model_as", "error"),
                               ({"save_model_as": "pt"}, "save_model_as", "error"),
                               ({"save_last_n_epochs": -1}, "save_last_n_epochs", "error"),
                               ({"save_last_n_steps_state": -2}, "save_last_n_steps_state", "error"),
                               ({"save_last_n_epochs_state": 2}, "save_last_n_epochs_state", "warning"),
                               ({"save_every_n_epochs": 0, "save_last_n_epochs": 2}, "save_last_n_epochs", "warning")):
        _, problems = validate_values(values, for_training=False)
        assert (key, level) in {(p.setting, p.level) for p in problems}, values
    _, problems = validate_values({"save_model_as": "ckpt"}, for_training=False)
    assert "pickle" in [p.message for p in problems if p.setting == "save_model_as"][0]


def test_a_kohya_ckpt_config_imports_as_safetensors_with_a_note():
    result = import_kohya_config({"save_model_as": "ckpt", "training_comment": "hello"})
    assert result.values["save_model_as"] == "safetensors" and result.values["training_comment"] == "hello"
    assert any("imported as safetensors" in note for note in result.notes)
