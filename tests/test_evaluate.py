"""Tests of the evaluator: the report, integrity checks, SavedModels, masking flags, k-NN, t-SNE."""

import json
import os
import sys

import pytest
import tensorflow as tf

from agkd_tf import attacks as attacks_lib
from agkd_tf import evaluation
from agkd_tf.evaluation import masking
from agkd_tf import report
from agkd_tf import train_lib
from agkd_tf.core.errors import UserError
from tests import conftest


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp('eval') / 'run')
  config = train_lib.TrainConfig(model_dir=model_dir, dataset='synthetic:8', train_examples=256,
                                 test_examples=60, model='cnn-cpu', epochs=8, batch_size=32,
                                 lr=0.05, lr_schedule='constant', eval_attack_steps=0,
                                 verbose=0, seed=0)
  train_lib.train(config, strategy=tf.distribute.OneDeviceStrategy('/cpu:0'))
  return model_dir


def _config(model_dir, **overrides):
  values = dict(model_dir=model_dir, attacks=('clean', 'fgsm', 'pgd5', 'cw5', 'mim5', 'aa'),
                num_examples=40, aa_examples=20, batch_size=20, masking_checks=False, verbose=0)
  values.update(overrides)
  return evaluation.EvalConfig(**values)


def test_evaluation_report(trained_run):
  result = evaluation.evaluate(_config(trained_run))
  acc = result['accuracy']
  assert acc['clean'] > 30.0  # Chance is 10%.
  for name in ('fgsm', 'pgd5', 'cw5', 'mim5', 'aa'):
    assert 0.0 <= acc[name] <= acc['clean'] + 1e-9
  # Attacks hurt an undefended model, and AutoAttack is at least about as strong as PGD.
  assert acc['pgd5'] < acc['clean'] - 10.0
  assert acc['aa'] <= min(acc['pgd5'], acc['cw5']) + 5.0
  assert set(result['aa']['flipped']) == {'apgd-ce', 'apgd-t', 'fab-t', 'square'}
  assert all(d <= 8 / 255 + 1e-6 for d in result['max_perturbation'].values())
  # Each image's verdict is kept, so two models can be compared image by image; they add up to
  # the accuracies (AutoAttack's over its own first aa_examples images).
  verdicts = result['correct_per_image']
  assert set(verdicts) == {'clean', 'fgsm', 'pgd5', 'cw5', 'mim5', 'aa'}
  assert len(verdicts['clean']) == 40 and len(verdicts['aa']) == 20
  for name, bits in verdicts.items():
    assert set(bits) <= {'0', '1'} and round(100 * bits.count('1') / len(bits), 2) == acc[name]
  with open(os.path.join(trained_run, 'eval', 'eval.json')) as f:
    assert json.load(f)['accuracy'] == acc
  with open(os.path.join(trained_run, 'eval', 'eval.md')) as f:
    text = f.read()
  assert '| PGD(20) |' in text and 'AutoAttack components' in text


def test_cleverhans_backend_agrees_on_deterministic_attacks(trained_run, tmp_path):
  native = evaluation.evaluate(_config(trained_run, attacks=('clean', 'fgsm', 'bim5', 'mim5'),
                                         output_dir=str(tmp_path / 'n')))
  ch = evaluation.evaluate(_config(trained_run, attacks=('clean', 'fgsm', 'bim5', 'mim5'),
                                     attack_backend='cleverhans', output_dir=str(tmp_path / 'c')))
  assert native['accuracy'] == ch['accuracy']


def test_an_attack_leaving_the_eps_ball_is_an_error(trained_run, tmp_path, monkeypatch):
  real = attacks_lib.get_attack

  class Cheat:

    def __init__(self, attack):
      self.attack = attack

    def __call__(self, model_fn, x, y, eps, seed=None):
      return tf.clip_by_value(self.attack(model_fn, x, y, eps, seed=seed) + 2 * eps, 0.0, 1.0)

  monkeypatch.setattr(attacks_lib, 'get_attack', lambda name: Cheat(real(name)))
  with pytest.raises(evaluation.IntegrityError, match='exceeds eps'):
    evaluation.evaluate(_config(trained_run, attacks=('clean', 'pgd5'),
                                  output_dir=str(tmp_path / 'o')))
  assert not os.path.exists(tmp_path / 'o' / 'eval.json')


def test_saved_model_bring_your_own(trained_run, tmp_path):
  result = evaluation.evaluate(_config(None, saved_model=os.path.join(trained_run, 'export'),
                                         dataset='synthetic:8', attacks=('clean', 'pgd5'),
                                         output_dir=str(tmp_path / 'sm')))
  assert result['accuracy']['clean'] > 30.0  # Chance is 10%.


def _save(module, path, shape):
  sig = tf.function(module.__call__, input_signature=[tf.TensorSpec(shape, tf.float32)])
  tf.saved_model.save(module, path, signatures={'serving_default': sig})


class _Probabilities(tf.Module):

  def __init__(self):
    super().__init__()
    self.w = tf.Variable(tf.random.stateless_normal([8 * 8 * 3, 10], [1, 2]))

  def __call__(self, x):
    return {'probs': tf.nn.softmax(tf.reshape(x, [-1, 8 * 8 * 3]) @ self.w)}


def test_saved_model_with_probabilities_or_wrong_input_is_refused(tmp_path):
  _save(_Probabilities(), str(tmp_path / 'p'), [None, 8, 8, 3])
  with pytest.raises(UserError, match='looks like probabilities'):
    evaluation.load_model(saved_model=str(tmp_path / 'p'))
  flat = _Probabilities()
  flat_sig = tf.function(lambda x: {'logits': x @ flat.w},
                         input_signature=[tf.TensorSpec([None, 192], tf.float32)])
  tf.saved_model.save(flat, str(tmp_path / 'flat'), signatures={'serving_default': flat_sig})
  with pytest.raises(UserError, match='NHWC'):
    evaluation.load_model(saved_model=str(tmp_path / 'flat'))


def test_masking_flags():
  honest = {'clean': 80.0, 'pgd20': 45.0, 'cw20': 44.0, 'aa': 42.0}
  assert not masking.masking_flags(honest, {'eps_sweep': {'0.01': 60.0, '0.03': 45.0,
                                                                 '0.06': 5.0}})
  # AA on a subset is compared with PGD-20 on that same subset, in both directions.
  subset = {'clean': 80.0, 'pgd20': 45.0, 'cw20': 44.0, 'aa': 30.0}
  assert not masking.masking_flags(subset, {'pgd20_on_aa_examples': 32.0,
                                                  'aa_examples': 200})
  hidden = {'clean': 80.0, 'pgd20': 35.0, 'cw20': 34.0, 'aa': 33.0}
  assert 'on the same 200 images' in ' '.join(masking.masking_flags(
      hidden, {'pgd20_on_aa_examples': 45.0, 'aa_examples': 200}))
  masked = {'clean': 80.0, 'pgd20': 60.0, 'cw20': 58.0, 'aa': 33.0}
  flags = masking.masking_flags(masked, {
      'pgd20_restarts': 50.0, 'transfer_pgd20': 40.0,
      'eps_sweep': {'0.01': 61.0, '0.03': 60.0, '0.06': 62.0}, 'random_outputs': True,
      'large_eps': 64 / 255, 'pgd20_large_eps': 40.0})
  text = ' '.join(flags)
  for needle in ('AutoAttack (33.00%)', 'restarts', 'black-box', 'does not decrease',
                 'eps = 64/255 is still 40.0%', 'randomised'):
    assert needle in text
  assert 'margin loss is fooled as well' in text
  # MART-like: CW-20 already finds what AA finds, so the gap is cross-entropy's alone.
  mart_like = {'clean': 42.0, 'pgd20': 27.6, 'cw20': 21.0, 'aa': 20.4}
  text = ' '.join(masking.masking_flags(mart_like, {'aa_examples': 500}))
  assert 'AutoAttack (20.40%)' in text and 'specific to the cross-entropy loss' in text
  # CW-20 on other images than AA's proves nothing either way.
  text = ' '.join(masking.masking_flags(mart_like, {'aa_examples': 200,
                                                          'pgd20_on_aa_examples': 27.6}))
  assert 'AutoAttack' in text and 'CW-20' not in text
  # An AT-like model keeps accuracy at twice its training eps; only the large eps must reach ~0.
  at_like = {'clean': 50.0, 'pgd20': 27.4, 'aa': 23.0}
  assert not masking.masking_flags(at_like, {
      'eps_sweep': {'0.0078': 43.6, '0.0157': 37.8, '0.0314': 27.4, '0.0627': 12.6},
      'large_eps': 64 / 255, 'pgd20_large_eps': 0.4})


def test_knn_tsne_and_masking_outputs(trained_run, tmp_path):
  result = evaluation.evaluate(_config(
      trained_run, attacks=('clean', 'pgd20'), knn=True, knn_train_examples=100, tsne=True,
      masking_checks=True, eps_sweep=(2 / 255, 8 / 255), output_dir=str(tmp_path / 'k')))
  knn = result['knn']
  assert knn['k'] == 50 and knn['train_examples'] == 100
  assert abs(knn['clean']['softmax'] - result['accuracy']['clean']) < 1e-9
  assert 0 <= knn['pgd20']['knn'] <= 100
  assert os.path.isfile(tmp_path / 'k' / 'eps_sweep.png')
  # The all but unbounded attack runs too, and is at least as strong as PGD-20 at 8/255.
  assert result['large_eps'] == masking.LARGE_EPS
  assert 0 <= result['pgd20_large_eps'] <= result['accuracy']['pgd20']
  assert os.path.isfile(tmp_path / 'k' / 'tsne_grid.png')
  assert len(result['tsne']) == 11  # The grid plus one figure per class.
  assert set(result['eps_sweep']) == {f'{2 / 255:.6f}', f'{8 / 255:.6f}'}


def test_report_merges_runs(trained_run, tmp_path):
  other = tmp_path / 'other' / 'eval'
  os.makedirs(other)
  with open(other / 'eval.json', 'w') as f:
    json.dump({'accuracy': {'clean': 90.0, 'pgd20': 1.0}, 'masking_flags': ['x']}, f)
  evaluation.evaluate(_config(trained_run, attacks=('clean', 'pgd5')))
  table = report.merge([trained_run, str(tmp_path / 'other')])
  lines = table.splitlines()
  assert lines[0].startswith('| model | clean | FGSM |')
  assert lines[2].startswith('| run |') and lines[3].startswith('| other | 90.00 |')
  assert '- other: x' in table


def test_evaluate_binary_bad_input(tmp_path):
  proc = conftest.run_binary('evaluate', f'--model_dir={tmp_path}/none')
  assert proc.returncode == 2 and 'not a training run directory' in proc.stderr
  proc = conftest.run_binary('evaluate', f'--model_dir={tmp_path}', '--attacks=pgd',
                             '--saved_model=x')
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith('error: ')




def test_eps_sweep_step_is_passed_to_the_attack():
  # The eps sweep scales PGD's step with eps; the runner must really use the step it is given.
  w = tf.random.stateless_normal((8 * 8 * 3, 3), seed=(0, 1))

  class Linear:
    logits_fn = staticmethod(lambda x: tf.reshape(x, (-1, 8 * 8 * 3)) @ w)

  x = tf.fill((4, 8, 8, 3), 0.5).numpy()
  y = tf.constant([0, 1, 2, 0]).numpy()
  runner = evaluation.AttackRunner(Linear, x, y, _config(None))
  _, default_dev = runner.attack('bim1', eps=16 / 255)
  _, scaled_dev = runner.attack('bim1', eps=16 / 255, step_size=4 / 255)
  assert abs(default_dev - attacks_lib.DEFAULT_STEP_SIZE) < 1e-6
  assert abs(scaled_dev - 4 / 255) < 1e-6


def test_aa_version_rand_runs_the_eot_attacks(trained_run, tmp_path):
  result = evaluation.evaluate(_config(trained_run, attacks=('clean', 'aa'), aa_examples=6,
                                         aa_version='rand', output_dir=str(tmp_path)))
  assert result['aa_version'] == 'rand'
  assert set(result['aa']['flipped']) == {'apgd-ce', 'apgd-dlr'}
  with pytest.raises(UserError, match='AutoAttack version'):
    evaluation.evaluate(_config(trained_run, aa_version='nope'))


def test_attention_figure_draws_every_network(tmp_path):
  from agkd_tf.evaluation import analysis  # pylint: disable=g-import-not-at-top
  from tests import helpers  # pylint: disable=g-import-not-at-top
  nets = {'a': helpers.dense_network(seed=0), 'b': helpers.dense_network(seed=5)}
  x = tf.random.stateless_uniform((3, 8, 8, 3), (0, 3)).numpy()
  path = analysis.attention_figure(nets, x, str(tmp_path / 'att.png'))
  assert os.path.getsize(path) > 1000


def test_every_published_model_evaluates_from_its_saved_model(tmp_path, shared_cifar):
  """bench/results/models/<row>/ SavedModels load in the evaluator; all but teachers are robust."""
  root = os.path.join(conftest.REPO, 'bench', 'results', 'models')
  rows = sorted(os.listdir(root))
  assert rows, 'no published models'
  for row in rows:
    out = tmp_path / row
    proc = conftest.run_binary('evaluate', f'--saved_model={os.path.join(root, row)}',
                               f'--dataset=folder:{shared_cifar}', '--attacks=clean,pgd20',
                               '--num_examples=100', '--masking_checks=false',
                               f'--output_dir={out}', timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / 'eval.json') as f:
      accuracy = json.load(f)['accuracy']
    if _is_natural_teacher(row):  # A recipe study's teacher: accurate, and not robust at all.
      assert accuracy['clean'] > 70 and accuracy['pgd20'] < 5, (row, accuracy)
    else:
      assert accuracy['clean'] > 30 and accuracy['pgd20'] > 10, (row, accuracy)


def _is_natural_teacher(row):
  if conftest.REPO not in sys.path:
    sys.path.insert(0, conftest.REPO)
  # pylint: disable=g-import-not-at-top
  from bench import recipe_study
  # pylint: enable=g-import-not-at-top
  key = row[len('recipe_'):] if row.startswith('recipe_') else None
  return key in recipe_study.BY_KEY and recipe_study.BY_KEY[key].is_teacher
