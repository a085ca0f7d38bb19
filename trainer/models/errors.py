"""The one exception type of model loading, in a module of its own so torch-free code can raise it too."""


class ModelLoadError(RuntimeError):
    """The base model could not be loaded; the message says which file and what to do.

    ``setting`` names the job setting to blame (the model path unless the separate VAE or v2 is at fault).
    """

    def __init__(self, message: str, setting: str = "pretrained_model_name_or_path"):
        super().__init__(message)
        self.setting = setting
