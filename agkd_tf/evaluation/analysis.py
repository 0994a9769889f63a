"""Representation analyses of the AGKD-BML paper's supplementary material.

- `knn_table`: Table 6. A k-NN classifier (k = 50) on the penultimate embeddings of the training
  set, against the softmax classifier, on clean and PGD-20 test images. scikit-learn's
  `KNeighborsClassifier` (Euclidean distance, uniform weights) does the neighbour search.
- `tsne_figures`: Figures 1-4. Per attacked class, a t-SNE (scikit-learn) of the clean test
  embeddings of all classes (coloured triangles) together with the PGD-20 adversarial examples of
  that class (red circles).
- `attention_figure`: the attention maps of several networks over the same test images (the
  paper's Figure 5 compares the teacher, the AGKD-BML student and AT this way).
"""

import os

import numpy as np
import tensorflow as tf


def embed(model, x, batch_size=256):
  """Penultimate embeddings and predictions of float32 [0, 1] (or uint8) images."""
  x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
  embs, preds = [], []
  for i in range(0, len(x), batch_size):
    batch = tf.constant(x[i:i + batch_size])
    embs.append(model.embedding_fn(batch).numpy())
    preds.append(np.argmax(model.logits_fn(batch).numpy(), -1))
  return np.concatenate(embs), np.concatenate(preds)


def knn_table(model, splits, runner, x_pgd20, k=50, batch_size=256):
  """k-NN and softmax accuracy (%) on clean and PGD-20 images, Table 6's layout.

  Args:
    model: a `LoadedModel` with an embedding_fn.
    splits: the data; its training split is the k-NN memory.
    runner: an `evaluation.AttackRunner` holding the test images and labels.
    x_pgd20: PGD-20 adversarial test images (computed by the runner when None).
    k: neighbours.
    batch_size: embedding batch size.

  Returns:
    {'k', 'train_examples', 'clean': {'knn', 'softmax'}, 'pgd20': {'knn', 'softmax'}}.
  """
  from sklearn.neighbors import KNeighborsClassifier  # pylint: disable=g-import-not-at-top
  train_emb, _ = embed(model, splits.x_train, batch_size)
  knn = KNeighborsClassifier(n_neighbors=min(k, len(train_emb)))
  knn.fit(train_emb, splits.y_train)
  if x_pgd20 is None:
    (_, x_pgd20), _ = runner.attack('pgd20', keep=True)
  out = {'k': int(knn.n_neighbors), 'train_examples': int(len(train_emb))}
  for name, x in (('clean', runner.x), ('pgd20', x_pgd20)):
    emb, pred = embed(model, x, batch_size)
    out[name] = {'knn': 100.0 * float((knn.predict(emb) == runner.y).mean()),
                 'softmax': 100.0 * float((pred == runner.y).mean())}
  return out


def tsne_figures(model, x, y, x_adv, class_names, output_dir, seed=0, per_class=100):
  """t-SNE plots of clean embeddings plus one class's PGD-20 examples; returns PNG paths."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top
  clean_emb, _ = embed(model, x)
  adv_emb, _ = embed(model, x_adv)
  rng = np.random.RandomState(seed)
  classes = sorted(set(int(c) for c in y))
  cmap = plt.get_cmap('tab10' if len(classes) <= 10 else 'tab20')
  paths = []
  cols = min(5, len(classes))
  rows = -(-len(classes) // cols)
  grid, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
  for i, c in enumerate(classes):
    members = np.flatnonzero(y == c)
    chosen = rng.choice(members, min(per_class, len(members)), replace=False)
    points = np.concatenate([clean_emb, adv_emb[chosen]])
    perplexity = min(30.0, max(2.0, (len(points) - 1) / 3.0))
    xy = TSNE(n_components=2, perplexity=perplexity, init='pca', random_state=seed).fit_transform(
        points)
    clean_xy, adv_xy = xy[:len(clean_emb)], xy[len(clean_emb):]
    fig, ax = plt.subplots(figsize=(5, 5))
    for target in (ax, axes[i // cols][i % cols]):
      for j, cj in enumerate(classes):
        sel = y == cj
        target.scatter(clean_xy[sel, 0], clean_xy[sel, 1], marker='^', s=6, color=cmap(j % 20),
                       label=str(class_names[cj]) if target is ax else None)
      target.scatter(adv_xy[:, 0], adv_xy[:, 1], marker='o', s=10, color='red',
                     label='PGD-20 adversarial' if target is ax else None)
      target.set_title(f'attacked class: {class_names[c]}', fontsize=9)
      target.set_xticks([])
      target.set_yticks([])
    ax.legend(fontsize=6, markerscale=2, loc='best')
    path = os.path.join(output_dir, f'tsne_{c:02d}_{class_names[c]}.png')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
  for j in range(len(classes), rows * cols):
    axes[j // cols][j % cols].axis('off')
  grid.tight_layout()
  grid_path = os.path.join(output_dir, 'tsne_grid.png')
  grid.savefig(grid_path, dpi=90)
  plt.close(grid)
  return [grid_path] + paths


def attention_figure(networks, x, path, kind='channel_sum'):
  """Saves a grid: a row per image, the image and then each network's attention map over it.

  Args:
    networks: {column title: zoo network}, in column order.
    x: [N, H, W, C] float32 images in [0, 1] (or uint8).
    path: the PNG to write.
    kind: the attention of `methods.agkd_bml.attention` (channel_sum, the paper's default).

  Returns:
    `path`.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  from agkd_tf.methods import agkd_bml  # pylint: disable=g-import-not-at-top
  x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
  size = x.shape[1:3]
  maps = {}
  for name, net in networks.items():
    fm = net(tf.constant(x), training=False)['feature_map']
    a = agkd_bml.attention(fm, kind)[..., None]
    maps[name] = tf.image.resize(a, size, method='bilinear')[..., 0].numpy()
  cols = 1 + len(networks)
  fig, axes = plt.subplots(len(x), cols, figsize=(1.8 * cols, 1.8 * len(x)), squeeze=False)
  for i, image in enumerate(x):
    axes[i][0].imshow(image)
    for j, (name, m) in enumerate(maps.items(), start=1):
      axes[i][j].imshow(image)
      # The map over the image, as the paper shows it: where the network looks.
      axes[i][j].imshow(m[i], cmap='jet', alpha=0.5, vmin=0.0, vmax=1.0)
      if i == 0:
        axes[i][j].set_title(name, fontsize=8)
    if i == 0:
      axes[i][0].set_title('image', fontsize=8)
    for ax in axes[i]:
      ax.set_xticks([])
      ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
