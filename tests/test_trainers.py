"""The absl trainers as a user runs them: processes, flags in, files out.

Each trainer runs in a process of its own, forked from a server that has
imported kqreg (tests/trainer_process.py)."""

import csv
import json
import os
import signal
import time

import pytest
import trainer_process

TINY = ["--dataset=kqreg_digits", "--model=cnn", "--train_examples=64", "--batch_size=32",
        "--verbose=0"]


def _run(module, *args, timeout=600):
  return trainer_process.run(module, *args, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--bits=w9"], "flag --bits=w9: Bad weight bits 9"),
    (["--bits=w4,first"], "Bad policy token 'first'"),
    (["--epochs=-2"], "flag --epochs=-2"),
    (["--batch_size=0"], "flag --batch_size=0"),
    (["--model=vgg16"], "flag --model=vgg16"),
    (["--optimizer=lion"], "flag --optimizer=lion"),
    (["--dataset=nosuch"], "Unknown dataset 'nosuch'"),
    (["--dataset=cifar10", "--data_dir=/nonexistent/tfds"], "not prepared in /nonexistent/tfds"),
    (["--train_examples=5000"], "--train_examples=5000 is larger than the training split"),
])
def test_classify_bad_input_exits_with_one_line(args, message, tmp_path):
  result = _run("trainers.classify", f"--model_dir={tmp_path / 'run'}", *args)
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith("kqreg-classify: error: ") and message in lines[0]


def test_classify_requires_model_dir():
  result = _run("trainers.classify", "--bits=w4")
  assert result.returncode == 2 and "--model_dir" in result.stderr
  assert "Traceback" not in result.stderr


def test_classify_reads_a_flagfile(tmp_path):
  flagfile = tmp_path / "tiny.cfg"
  flagfile.write_text("\n".join(TINY + ["--bits=w4a8", "--epochs=2", "--freeze_ranges_after=1",
                                        f"--model_dir={tmp_path / 'run'}"]) + "\n")
  result = _run("trainers.classify", f"--flagfile={flagfile}")
  assert result.returncode == 0, result.stderr
  assert "w4a8: finished" in result.stdout
  assert (tmp_path / "run" / "result.json").exists()
  params = json.loads((tmp_path / "run" / "params.json").read_text())
  assert params["config"]["freeze_ranges_after"] == 1


_epochs = trainer_process.history_epochs


def test_killed_run_resumes_without_losing_or_repeating_epochs(tmp_path):
  model_dir = str(tmp_path / "run")
  args = [*TINY, "--bits=w4", "--epochs=6", f"--model_dir={model_dir}"]
  proc = trainer_process.TrainerProcess("trainers.classify", *args)
  deadline = time.time() + 300
  while len(_epochs(model_dir)) < 2 and time.time() < deadline and proc.poll() is None:
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done = _epochs(model_dir)
  assert 2 <= len(done) < 6, done
  result = _run("trainers.classify", *args)
  assert result.returncode == 0, result.stderr
  assert _epochs(model_dir) == [str(e) for e in range(6)]
  with open(os.path.join(model_dir, "history.csv"), newline="") as f:
    assert all(row["val_loss"] for row in csv.DictReader(f))
  with open(os.path.join(model_dir, "noise.csv"), newline="") as f:
    noise_epochs = [row["epoch"] for row in csv.DictReader(f)]
  per_epoch = {e: noise_epochs.count(str(e)) for e in range(6)}
  assert len(set(per_epoch.values())) == 1 and per_epoch[0] == 8, per_epoch  # 7 layers + output


@pytest.mark.parametrize("args, message", [
    (["--sweep_bits=fp,w9"], "--sweep_bits: Bad weight bits 9"),
    (["--seeds=0,x"], "--seeds: expected integers"),
    (["--sweep_bits=fp,fp"], "repeats a policy"),
])
def test_sweep_bad_input_exits_with_one_line(args, message, tmp_path):
  result = _run("trainers.sweep", f"--output_dir={tmp_path}", *args)
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and message in lines[0], result.stderr


def test_sigterm_stops_with_one_line_and_the_run_resumes(tmp_path):
  model_dir = str(tmp_path / "run")
  proc = trainer_process.TrainerProcess(
      "trainers.classify", *TINY, "--bits=w4", "--epochs=40", "--noise_analysis=false",
      f"--model_dir={model_dir}")
  deadline = time.time() + 300
  while len(_epochs(model_dir)) < 2 and time.time() < deadline and proc.poll() is None:
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  stderr = proc.wait(timeout=120).stderr
  assert proc.returncode == 130, stderr
  lines = [l for l in stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and "interrupted (SIGTERM) after" in lines[0], stderr
  assert "rerun the same command to resume" in lines[0]
  done = len(_epochs(model_dir))
  assert 2 <= done < 40 and os.path.isdir(os.path.join(model_dir, "backup"))


def test_deterministic_runs_are_bit_identical(tmp_path):
  histories, weights = [], []
  for name in ("a", "b"):
    model_dir = tmp_path / name
    result = _run("trainers.classify", *TINY, "--bits=w4a8", "--epochs=2", "--seed=3",
                  "--deterministic", "--noise_analysis=false", f"--model_dir={model_dir}")
    assert result.returncode == 0, result.stderr
    histories.append((model_dir / "history.csv").read_text())
    weights.append(_weights_digest(model_dir / "model.keras"))
  assert histories[0] == histories[1]
  assert weights[0] == weights[1]


def _weights_digest(path):
  import hashlib
  import zipfile
  with zipfile.ZipFile(path) as archive:
    return hashlib.sha256(archive.read("model.weights.h5")).hexdigest()


MLP = ["--dataset=kqreg_digits", "--model=mlp", "--model_args={'hidden': (64,)}",
       "--train_examples=128", "--batch_size=32", "--epochs=3", "--bits=w4", "--verbose=0"]


def _final(model_dir):
  with open(os.path.join(model_dir, "result.json")) as f:
    return json.load(f)


def test_mirrored_on_two_virtual_cpus_matches_one_device(tmp_path):
  single = _run("trainers.classify", *MLP, f"--model_dir={tmp_path / 'one'}")
  mirrored = _run("trainers.classify", *MLP, "--strategy=mirrored", "--virtual_cpus=2",
                  f"--model_dir={tmp_path / 'two'}")
  assert single.returncode == 0 and mirrored.returncode == 0, mirrored.stderr
  one, two = _final(tmp_path / "one"), _final(tmp_path / "two")
  assert one["replicas"] == 1 and two["replicas"] == 2
  for key in ("train_loss", "val_loss", "val_accuracy"):
    assert two[key] == pytest.approx(one[key], rel=1e-3, abs=1e-4), key
  assert (tmp_path / "two" / "noise.csv").exists()


def test_mirrored_cli_run_trains_on_two_replicas(tmp_path):
  # The ranges themselves are checked per replica, trained then frozen, in
  # test_range_freeze.py; here the trainer path runs a mirrored w4a8 run.
  # Each replica's batch min/max is averaged into the range (as in tfmot), so
  # the figures are not one device's; the run must train and freeze.
  result = _run("trainers.classify", *MLP, "--bits=w4a8", "--freeze_ranges_after=2",
                "--strategy=mirrored", "--virtual_cpus=2", "--noise_analysis=false",
                f"--model_dir={tmp_path / 'run'}")
  assert result.returncode == 0, result.stderr[-2000:]
  final = _final(tmp_path / "run")
  assert final["replicas"] == 2 and final["val_loss"] == final["val_loss"]  # not NaN


def _free_ports(n):
  import socket
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def test_multi_worker_two_processes_train_and_chief_writes_outputs(tmp_path):
  import json
  ports = _free_ports(2)
  cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
  model_dir = tmp_path / "run"
  procs = []
  start = time.time()
  for index in range(2):
    env = dict(os.environ, TF_CONFIG=json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": index}}))
    procs.append(trainer_process.TrainerProcess(
        "trainers.classify", *MLP, "--strategy=multi_worker", f"--model_dir={model_dir}",
        env=env))
  for proc in procs:
    proc.wait(timeout=400)
  elapsed = time.time() - start
  for proc in procs:
    assert proc.returncode == 0, proc.stderr[-2000:]
  result = _final(model_dir)
  assert result["replicas"] == 2 and result["epochs"] == 3
  assert _epochs(model_dir) == ["0", "1", "2"]
  for name in ("history.csv", "model.keras", "noise.csv", "params.json", "result.json"):
    assert (model_dir / name).exists(), name
  print(f"multi-worker run: {elapsed:.1f}s")


def test_corrupt_checkpoint_is_refused_in_one_line(tmp_path):
  model_dir = tmp_path / "run"
  args = [*MLP[:-2], "--epochs=30", "--verbose=0", "--noise_analysis=false",
          f"--model_dir={model_dir}"]
  proc = trainer_process.TrainerProcess("trainers.classify", *args)
  deadline = time.time() + 300
  while len(_epochs(model_dir)) < 3 and time.time() < deadline and proc.poll() is None:
    time.sleep(0.1)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  data_files = list((model_dir / "backup").rglob("*.data-*"))
  assert data_files
  for path in data_files:
    path.write_bytes(path.read_bytes()[:100])
  result = _run("trainers.classify", *args)
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and "cannot be restored" in lines[0], result.stderr
  assert "delete that folder" in lines[0]
  assert data_files[0].exists()  # nothing deleted behind the user's back


def test_truncated_tfrecord_gives_one_line(tmp_path):
  data_dir = tmp_path / "tfds"
  args = [*MLP, "--epochs=1", "--noise_analysis=false", f"--data_dir={data_dir}"]
  assert _run("trainers.classify", *args, f"--model_dir={tmp_path / 'a'}").returncode == 0
  (record,) = data_dir.glob("kqreg_digits/*/kqreg_digits-train.tfrecord*")
  record.write_bytes(record.read_bytes()[:20000])
  result = _run("trainers.classify", *[a for a in args if not a.startswith("--train_examples")],
                f"--model_dir={tmp_path / 'b'}")
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and "is corrupt (truncated record" in lines[0], result.stderr


def test_export_tflite_flag_writes_and_verifies_the_file(tmp_path):
  model_dir = tmp_path / "run"
  result = _run("trainers.classify", *MLP, "--bits=w8a8", "--export_tflite",
                "--noise_analysis=false", f"--model_dir={model_dir}")
  assert result.returncode == 0, result.stderr
  assert "model.tflite:" in result.stdout and "top-1 agreement" in result.stdout
  tflite = _final(model_dir)["tflite"]
  assert (model_dir / "model.tflite").exists()
  assert tflite["weight_types"] == ["INT8"] and tflite["ratio_to_float"] < 0.35
  assert tflite["top1_agreement"] >= 0.9 and tflite["examples"] == 256


def test_export_of_sub_8_bit_activations_is_refused_before_training(tmp_path):
  result = _run("trainers.classify", *MLP, "--bits=w4a4", "--export_tflite",
                "--noise_analysis=false", f"--model_dir={tmp_path / 'run'}")
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("kqreg-classify: error: "), result.stderr
  assert "--export_tflite with --bits=w4a4" in lines[0] and "4-bit activations" in lines[0]
  # Refused at validation: no run folder, no epoch trained.
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", ["model_dir", "data_dir"])
def test_unwritable_folders_are_one_line(flag, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  folders = {"model_dir": tmp_path / "run", "data_dir": tmp_path / "tfds"}
  folders[flag] = blocker / "sub"
  result = _run("trainers.classify", *MLP, "--epochs=1", "--noise_analysis=false",
                f"--model_dir={folders['model_dir']}", f"--data_dir={folders['data_dir']}")
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and f"--{flag}=" in lines[0], result.stderr
  assert "Traceback" not in result.stderr


def test_sweep_output_dir_that_cannot_be_created_is_one_line(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  result = _run("trainers.sweep", *TINY, "--sweep_bits=fp", "--seeds=0",
                f"--output_dir={blocker / 'out'}")
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and "--output_dir=" in lines[0], result.stderr


def test_sweep_workers_flag_says_what_its_default_is():
  from kqreg.study.sweep import workers as sweep
  from kqreg_trainers import flags as kqreg_flags
  assert [sweep.default_workers(cores) for cores in (1, 2, 4, 16)] == [1, 3, 5, 8]
  kqreg_flags.define_flags("sweep")
  assert "0: one per core and one more, at most 8" in kqreg_flags.FLAGS["workers"].help
