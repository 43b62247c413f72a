from setuptools import find_packages, setup

setup(
    name="megatron-gm",
    version="0.1.0",
    description="Group-MATES data selection for Megatron-LM pretraining",
    packages=find_packages(include=["megatron_gm", "megatron_gm.*"]),
    python_requires=">=3.12",
    install_requires=[
        "torch",
        "megatron-core>=0.17",
        "sentencepiece",
        "numpy",
        "tqdm",
    ],
    extras_require={
        "select": ["faiss-cpu", "mpi4py", "scipy"],
        "influence": ["transformers", "safetensors", "deepspeed"],
    },
)
