"""The pocket container runtime: pull images from a registry over HTTP and run them, build
images from Dockerfiles and push them.

Modules, one job each:

- `errors`: the error tree; every failure a user can act on is one of these.
- `credentials`: logins kept in Docker's `config.json`.
- `client`: the registry HTTP client (token and Basic auth, verified downloads).
- `platform`: the host's platform and picking a manifest out of an index.
- `store`: the local content-addressed store (blobs, unpacked layers, image records).
- `unpack`: applying a layer tar by the OCI layer rules, never writing outside its root.
- `pull`: resolving a reference, downloading layers in parallel, recording the image.
- `spec`: turning image config plus flags into the process to run (argv, env, user).
- `linux`, `capabilities`, `cgroups`, `rootfs`, `sandbox`: the Linux parts of running.
- `state`, `supervisor`, `volumes`: containers' records, their lifetimes and volumes.
- `networks`, `netns`, `endpoints`, `ports`: user-defined networks (a namespace with a
  bridge each), namespaces and `ip` run inside them, containers on networks (addresses,
  veth pairs, /etc/hosts, cleanup after crashes), and published ports (`-p`, the relay).
- `references`, `paths`: image references, and paths resolved inside a root (`secure_join`).
- Building: `dockerfile` (the parser, pure), `shellwords` (variable substitution, pure),
  `dockerignore` (patterns, pure), `buildconfig` (an image config as steps change it,
  pure), `buildcontext` (COPY sources, resolved and hashed), `buildcopy` (COPY and ADD
  into a stage), `buildmount` (an overlay in a throwaway namespace), `layerdiff` (an
  overlay's upper directory as a layer), `buildcache` (steps and file digests),
  `buildsteps` (RUN, COPY, WORKDIR), `buildimage` (the result in the store, a stored
  image as a stage's start), `build` (stages and steps, as Docker's classic builder).
- `push`: blobs (skipped, mounted or uploaded in resumable chunks), manifests, indexes.
- `commands`: the subcommands, a module per group (`images`: login, pull, images, rmi;
  `run`; `containers`: ps, logs, stop, rm, inspect; `network`: network create, ls, rm,
  inspect; `build`; `push`: push, tag); `cli` runs them on their own.
"""
