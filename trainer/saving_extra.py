"""kohya_ss's saving and metadata options that sit beside the Saver: the extra ``ss_*`` / model-spec fields
of the LoRA file, and which older epoch file or state folder to delete (sd-scripts' ``save_last_n_*``).

Pure functions of the typed job (``train_network.py`` ``train()`` metadata, ``library/sai_model_spec.py``,
``train_util`` ``save_and_remove_state_on_epoch_end`` / ``remove_model``), so the Saver stays small.
"""
from __future__ import annotations

from trainer.spec.sections import Job


def extra_metadata(job: Job) -> dict[str, object]:
    """Fields sd-scripts writes for the noise/loss options, the training comment, and the model-spec
    ``--metadata_*`` fields (title: metadata_title, else the output name; blank ones left out)."""
    loss = job.noise_loss
    meta: dict[str, object] = {
        "ss_training_comment": job.saving.training_comment or None,
        "ss_ip_noise_gamma": loss.ip_noise_gamma or None,
        "ss_ip_noise_gamma_random_strength": loss.ip_noise_gamma_random_strength,
        "ss_noise_offset_random_strength": loss.noise_offset_random_strength,
        "ss_debiased_estimation": loss.debiased_estimation_loss,
        "ss_loss_type": loss.loss_type,
        "ss_huber_schedule": loss.huber_schedule,
        "ss_huber_c": loss.huber_c,
        "ss_huber_scale": loss.huber_scale,
        "modelspec.title": job.saving.metadata_title or job.saving.output_name,
    }
    for field in ("author", "description", "license", "tags"):
        value = getattr(job.saving, f"metadata_{field}")
        if value:
            meta[f"modelspec.{field}"] = value
    if loss.min_timestep != 0 or loss.max_timestep != 1000:
        meta["modelspec.timestep_range"] = f"{loss.min_timestep},{loss.max_timestep}"
    return meta


def epoch_to_prune(epoch: int, keep_last: int, every: int) -> int | None:
    """After saving epoch ``epoch``: the epoch to delete so only the last ``keep_last`` saved epochs stay,
    ``epoch − every · keep_last`` (sd-scripts), or None (off, or nothing that old)."""
    if keep_last <= 0 or every <= 0:
        return None
    old = epoch - every * keep_last
    return old if old > 0 else None


def state_keep_last(state_setting: int, file_setting: int) -> int:
    """``save_last_n_*_state`` when set, else the file setting (sd-scripts: states follow the files)."""
    return state_setting if state_setting > 0 else file_setting
