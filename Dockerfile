# One image for every node of cluster.yaml: Ray's own image for the Ray we pin, plus this project
# and its dependencies. Not built on the development machines (they have no container daemon);
# tests/test_cluster_yaml.py checks it statically. Build and push (docs/cluster.md):
#   docker buildx build --platform linux/amd64 -t REGISTRY/cifar-ray:2.60.0-py311-cpu --push .
#   docker buildx build --platform linux/amd64 --build-arg VARIANT=gpu \
#       -t REGISTRY/cifar-ray:2.60.0-py311-gpu --push .

# Ray's tags are {Ray version}-{Python}-{platform}; -gpu aliases Ray's default CUDA image.
ARG RAY_VERSION=2.60.0
ARG PYTHON=py311
ARG VARIANT=cpu
FROM rayproject/ray:${RAY_VERSION}-${PYTHON}-${VARIANT}

ARG VARIANT
# Made by ray, the image's user, so that the in-tree build below can write into it.
WORKDIR /home/ray
RUN mkdir cifar-ray
WORKDIR /home/ray/cifar-ray
COPY --chown=ray:users pyproject.toml ./

# Dependencies from pyproject.toml alone, so a code change reuses this layer. The constraint keeps
# the image's Ray: pip fails rather than replace it. PyPI's Linux torch carries CUDA (gigabytes);
# the CPU image takes PyTorch's CPU-only wheels instead.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print(*p['dependencies'], *p['optional-dependencies']['s3'], sep='\n')" > /tmp/requirements.txt \
 && python -c "import ray; print('ray==' + ray.__version__)" > /tmp/ray.txt \
 && if [ "$VARIANT" = cpu ]; then \
      grep -E '^torch(vision)?[<>=~! ]' /tmp/requirements.txt > /tmp/torch.txt \
      && python -m pip install --no-cache-dir -c /tmp/ray.txt \
         --index-url https://download.pytorch.org/whl/cpu -r /tmp/torch.txt; \
    fi \
 && python -m pip install --no-cache-dir -c /tmp/ray.txt -r /tmp/requirements.txt

# The project itself (`python -m cifar.jobs.train`, the cifar-* commands); its dependencies are in.
COPY --chown=ray:users README.md LICENSE ./
COPY --chown=ray:users cifar ./cifar
COPY --chown=ray:users jobs ./jobs
RUN python -m pip install --no-cache-dir --no-deps .

# Out of the source folder, so the import below finds the installed package.
WORKDIR /home/ray
RUN python -c "import cifar.jobs.train, cifar.jobs.predict, ray, torch; print(ray.__version__, torch.__version__)"
