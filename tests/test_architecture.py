"""The layers of docs/architecture.md and no import circles (import-linter's contracts in pyproject.toml), and the
config as a leaf: each key's valid choices live beside its field and the registries that build them agree."""
from conftest import ROOT

from mcls.config import EXTERNAL_TRAINING, MASK_BACKBONE_HEADS, key_choices, serving_keys


def test_the_import_contracts_hold(capsys, monkeypatch):
    from importlinter.cli import lint_imports

    monkeypatch.chdir(ROOT)
    code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    shown = capsys.readouterr().out
    assert code == 0 and "3 kept, 0 broken" in shown, shown[-3000:]


def test_the_registries_hold_exactly_the_choices_the_config_accepts():
    from mcls.model.classifier import AGE_HEADS, HEAD_TYPES, TASK_BACKBONES
    from mcls.runtime.device import AMP_DTYPES
    from mcls.train.augment import AUGMENTATIONS
    from mcls.train.losses import LOSSES
    from mcls.train.mask_view import MASK_VIEWS
    from mcls.train.mixing import MIX_TASKS, MIXES
    from mcls.train.sampling import SAMPLERS

    registries = {"heads": HEAD_TYPES, "age_head": AGE_HEADS, "amp_dtype": AMP_DTYPES, "augment": AUGMENTATIONS,
                  "loss": LOSSES, "mix": MIXES, "mix_tasks": MIX_TASKS, "mask_view": MASK_VIEWS, "sampler": SAMPLERS,
                  "external_training": EXTERNAL_TRAINING}
    choices = key_choices()
    for key, registry in registries.items():
        assert set(choices[key]) == set(registry), key
    assert set(MASK_BACKBONE_HEADS) == set(TASK_BACKBONES)


def test_the_serving_keys_are_the_ones_serving_reads():
    from mcls.infer.serving import SERVING_KEYS

    assert SERVING_KEYS == serving_keys() == ("tta", "person_consistent", "group_threshold", "face_weight",
                                               "calibrate_age")


def test_every_module_is_at_most_400_lines():
    # past that a module holds two responsibilities; split where they part (docs/architecture.md)
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "mcls").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
