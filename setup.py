"""agkd_tf: adversarially robust image classifiers in TensorFlow 2 / Keras 3 (AGKD-BML, ICCV 2021)."""

import setuptools

setuptools.setup(
    name='agkd_tf',
    version='0.1.0',
    description=('AGKD-BML and the adversarial defences and attacks it is compared with, in '
                 'TensorFlow 2 / Keras 3.'),
    long_description=open('README.md').read() if __import__('os').path.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['agkd_tf', 'agkd_tf.*']),
    python_requires='>=3.10',
    install_requires=[
        'tensorflow>=2.16',
        'keras>=3.8',
        'tensorflow-datasets>=4.9',
        # tensorflow-datasets 4.9.10 imports it to download but does not declare it.
        'importlib_resources',
        'cleverhans>=4.0',
        'absl-py>=1.0',
        'tensorboard>=2.16',
        'scikit-learn>=1.3',
        'matplotlib>=3.7',
        'numpy',
        'pillow',
    ],
    extras_require={
        'test': ['pytest>=7', 'pytest-timeout'],
    },
)
