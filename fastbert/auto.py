"""``fastbert.AutoModel*``: the fastbert class for a checkpoint's or config's ``model_type``, as
transformers' Auto classes pick theirs."""

from __future__ import annotations

import importlib

from transformers import AutoConfig, PretrainedConfig

from fastbert.families import FAMILY_MODULES

# model_type -> the prefix of its classes' names
PREFIXES = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta", "camembert": "Camembert",
            "electra": "Electra", "distilbert": "DistilBert"}

# Auto class -> model_type -> fastbert class name; a type missing from a task has no such head.
TASKS = {
    "AutoModel": {t: f"{p}Model" for t, p in PREFIXES.items()},
    **{f"AutoModel{task}": {t: f"{p}{task}" for t, p in PREFIXES.items()}
       for task in ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering",
                    "ForMaskedLM", "ForMultipleChoice")},
    # transformers' choice: a masked-LM model for the families pretrained without another objective
    "AutoModelForPreTraining": {"bert": "BertForPreTraining", "electra": "ElectraForPreTraining",
                                "roberta": "RobertaForMaskedLM", "xlm-roberta": "XLMRobertaForMaskedLM",
                                "camembert": "CamembertForMaskedLM",
                                "distilbert": "DistilBertForMaskedLM"},
    "AutoModelForNextSentencePrediction": {"bert": "BertForNextSentencePrediction"},
}

# from_pretrained arguments that say where the config is (the rest go to the config, then the model)
_HUB_ARGUMENTS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
# from_pretrained arguments the model's from_pretrained gets as they were given
_MODEL_ARGUMENTS = ("dtype", "torch_dtype", "quantization_config")


class _FastbertAuto:
    """Base of the Auto classes: ``from_pretrained`` and ``from_config`` as transformers', with the class
    taken from fastbert's (a clear ``ValueError`` for a type fastbert does not take)."""

    _task = "AutoModel"

    def __init__(self, *args, **kwargs):
        raise EnvironmentError(f"fastbert.{type(self).__name__} is built with from_pretrained(path) or "
                               f"from_config(config)")

    @classmethod
    def class_for(cls, config: PretrainedConfig) -> type:
        """The fastbert class of this task for ``config.model_type``."""
        model_type = getattr(config, "model_type", None)
        names = TASKS[cls._task]
        if model_type not in names:
            supported = ", ".join(repr(t) for t in names)
            raise ValueError(f"fastbert.{cls._task} does not take model_type={model_type!r}; it takes {supported}")
        return getattr(importlib.import_module(FAMILY_MODULES[model_type]), names[model_type])

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs):
        """A new model of ``config`` with random weights; ``dtype``, ``attn_implementation`` and the other
        arguments of transformers' ``from_config``."""
        return cls.class_for(config)._from_config(config, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """The checkpoint at ``pretrained_model_name_or_path`` in its family's fastbert class; the
        arguments of transformers' ``from_pretrained`` (config overrides such as ``num_labels`` included)."""
        config = kwargs.pop("config", None)
        if not isinstance(config, PretrainedConfig):
            hub = {k: kwargs[k] for k in _HUB_ARGUMENTS if k in kwargs}
            # as transformers does: dtype="auto" means nothing to a config and a quantization_config given here
            # must not replace the checkpoint's, so the config sees neither; the model's from_pretrained gets
            # all three as given
            for_model = {k: kwargs[k] for k in _MODEL_ARGUMENTS if kwargs.get(k) is not None}
            for_config = {k: v for k, v in kwargs.items()
                          if not (k == "quantization_config" or (k in for_model and v == "auto"))}
            config, kwargs = AutoConfig.from_pretrained(config or pretrained_model_name_or_path, return_unused_kwargs=True,
                                                        **for_config)
            kwargs.update(hub, **for_model)
        return cls.class_for(config).from_pretrained(pretrained_model_name_or_path, *args, config=config, **kwargs)


def _auto_class(task: str) -> type:
    return type(task, (_FastbertAuto,), {"_task": task, "__module__": __name__, "__qualname__": task,
                                         "__doc__": f"transformers' ``{task}`` picking fastbert's classes."})


AutoModel = _auto_class("AutoModel")
AutoModelForSequenceClassification = _auto_class("AutoModelForSequenceClassification")
AutoModelForTokenClassification = _auto_class("AutoModelForTokenClassification")
AutoModelForQuestionAnswering = _auto_class("AutoModelForQuestionAnswering")
AutoModelForMaskedLM = _auto_class("AutoModelForMaskedLM")
AutoModelForMultipleChoice = _auto_class("AutoModelForMultipleChoice")
AutoModelForPreTraining = _auto_class("AutoModelForPreTraining")
AutoModelForNextSentencePrediction = _auto_class("AutoModelForNextSentencePrediction")
