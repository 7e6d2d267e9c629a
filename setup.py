"""Packaging: `pip install .` gives the `gsuper` console script; the runners ship inside the package."""

from setuptools import setup

setup(
    name="gsuper",
    version="0.2.0",
    description="A process supervisor on gevent for PHP queue consumers, Python and shell scripts",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # runners/ ships inside the package as gsuper/runner_files (gsuper.runners is the module
    # that builds the command lines; a package of the same name would shadow it).
    packages=["gsuper", "gsuper.importers", "gsuper.web", "gsuper.runner_files"],
    package_dir={"gsuper": "gsuper", "gsuper.runner_files": "runners"},
    package_data={
        "gsuper.runner_files": ["php/*.php", "python/*.py", "shell/*.sh"],
        # The dashboard: served by the master from the installed package, no asset from outside.
        "gsuper.web": ["static/*"],
    },
    install_requires=[
        "gevent>=23.9",
        "psutil>=5.9",
        "configobj>=5.0.8",
        "docopt-ng>=0.9",
        "setproctitle>=1.3",
        "prometheus_client>=0.17",
    ],
    extras_require={
        # setuptools and wheel: tests/test_packaging.py builds the package without a network.
        "test": ["pytest>=7", "pytest-timeout>=2", "hypothesis>=6", "redis>=4", "setuptools>=61", "wheel",
                 # websocket-client: the dashboard test drives headless Chromium over DevTools.
                 "websocket-client>=1.6",
                 # pyyaml: tests parse the Kubernetes manifests under deploy/.
                 "pyyaml>=6",
                 # pytest-xdist: the suite mostly waits on real processes; two pytest workers
                 # halve its wall time on 2 cores (scripts/test.sh).
                 "pytest-xdist>=3"],
        "dev": ["ruff>=0.5", "mypy>=1.8", "types-psutil"],
    },
    entry_points={"console_scripts": ["gsuper = gsuper.cli:main"]},
)
