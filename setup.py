"""Packaging for peng3dnet (the only metadata source)."""

import os

from setuptools import find_packages, setup

here = os.path.abspath(os.path.dirname(__file__))
about: dict = {}
with open(os.path.join(here, "peng3dnet", "version.py"), encoding="utf-8") as f:
    exec(f.read(), about)
with open(os.path.join(here, "README.md"), encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="peng3dnet",
    version=about["__version__"],
    description="TCP networking for Python games on peng3d and pyglet: protocol 2, events, game sync",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(exclude=["tests", "tests.*", "demos", "demos.*", "bench", "bench.*"]),
    package_data={"peng3dnet": ["py.typed"]},
    entry_points={"console_scripts": ["peng3dnet = peng3dnet.cli:main"]},
    install_requires=["msgpack>=1.0,<2", "blinker>=1.6"],
    extras_require={
        "game": ["peng3d==1.11.*", "pyglet>=1.5.31,<2"],
        "redis": ["redis>=5"],
        "test": [
            "redis>=5",
            "pytest>=7",
            "pytest-timeout>=2",
            "hypothesis>=6",
            "cryptography>=41",
            "ruff>=0.4",
            "mypy>=1.8",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Topic :: Games/Entertainment",
        "Topic :: System :: Networking",
        "Typing :: Typed",
    ],
)
