"""``layerloop/PrintSupervisor-v1``, its ``Box`` sibling, and the sim-to-real wrappers."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the environments)
from agent.baselines import SB3Policy
from envs.jobs import PartSpec, PrintJob, ProcessSettings
from envs.randomization import FaultRanges, RandomizationConfig, SensorRanges, load_randomization
from envs.supervisor import (
    TELEMETRY_NAMES,
    HiddenPhysics,
    PrintSupervisorBoxEnv,
    PrintSupervisorEnv,
    check_tuning,
    override_fan,
    shift_xy,
)
from envs.wrappers import DomainRandomization, RareFaults, SensorNoise
from sim_bridge.config import ConfigError
from sim_bridge.printers import load_printer

SMALL_JOB = PrintJob(job_id="supervisor-test", part=PartSpec(kind="rectangle", size_mm=[12.0, 12.0], height_mm=1.2,
                                                             center_mm=[117.5, 117.5]),
                     process=ProcessSettings(perimeters=2, infill_density=0.2, solid_layers=1))
"""Six layers on the Ender-3 profile: a few milliseconds per step."""
NOMINAL = HiddenPhysics()
ENDER3_250 = dataclasses.replace(load_printer("ender3-klipper"), hotend=dataclasses.replace(
    load_printer("ender3-klipper").hotend, max_temp_c=250.0))
FIELD = {name: i for i, name in enumerate(TELEMETRY_NAMES)}


def run_episode(env: gym.Env, actions: object, seed: int, options: dict | None = None) -> tuple[list, list[float]]:
    """Observations and rewards of one episode; ``actions(obs, step)`` gives each action."""
    obs, _ = env.reset(seed=seed, options=options)
    observations, rewards = [obs], []
    done, step = False, 0
    while not done:
        obs, reward, terminated, truncated, _ = env.step(actions(obs, step))
        observations.append(obs)
        rewards.append(reward)
        done, step = terminated or truncated, step + 1
    return observations, rewards


# -- config ------------------------------------------------------------------------------------------------
def test_config_file_mirrors_the_defaults() -> None:
    assert load_randomization() == RandomizationConfig()


def test_config_rejects_unknown_keys_and_bad_ranges(tmp_path: object) -> None:
    bad = tmp_path / "r.yaml"
    bad.write_text("sensor:\n  temperatur_noise_c: 1.0\n")
    with pytest.raises(ConfigError, match="did you mean 'temperature_noise_c'"):
        load_randomization(bad)
    bad.write_text("supervisor:\n  fan_efficacy: [0.9, 0.2]\n")
    with pytest.raises(ConfigError, match="low <= high"):
        load_randomization(bad)


# -- the environments ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", ["layerloop/PrintSupervisor-v1", "layerloop/PrintSupervisorBox-v1"])
def test_check_env(env_id: str) -> None:
    check_env(gym.make(env_id, difficulty=2).unwrapped, skip_render_check=True)


def test_same_seed_same_episode() -> None:
    rng = np.random.default_rng(0)
    actions = [rng.uniform(-1, 1, 5).astype(np.float32) for _ in range(20)]
    runs = [run_episode(gym.make("layerloop/PrintSupervisorBox-v1"), lambda o, k: actions[k], seed=11)
            for _ in range(2)]
    assert runs[0][1] == runs[1][1]
    assert all(np.array_equal(a, b) for a, b in zip(runs[0][0], runs[1][0], strict=True))
    texts = [run_episode(gym.make("layerloop/PrintSupervisor-v1"), lambda o, k: "M220 S90\nM104 S215", seed=3)
             for _ in range(2)]
    assert texts[0][1] == texts[1][1]
    assert [o["prompt"] for o in texts[0][0]] == [o["prompt"] for o in texts[1][0]]
    other = run_episode(gym.make("layerloop/PrintSupervisorBox-v1"), lambda o, k: actions[k], seed=12)
    assert other[1] != runs[0][1]


def test_tuning_windows_and_refusals() -> None:
    tuning = check_tuning("M221 S80\nM221 S121\nM220 S150\nM220 S49\nM104 S225\nM104 S194\nM106 S255\n"
                          "M106 S256\nSET_PRESSURE_ADVANCE ADVANCE=0.2\nSET_PRESSURE_ADVANCE ADVANCE=0.3\n"
                          "; a comment\n\nG1 X10\nM109 S210\nM221 S95 T1\n", 210.0, ENDER3_250)
    assert tuning.accepted == ["M221 S80", "M220 S150", "M104 S225", "M106 S255",
                               "SET_PRESSURE_ADVANCE ADVANCE=0.2"]
    assert len(tuning.refused) == 8
    assert "M221: flow 121 % out of the live-tuning window [80, 120]" in tuning.refused[0]
    assert check_tuning("M104 S255", 245.0, ENDER3_250).refused[0].endswith("window [230, 250]")
    # Disguised forms are read as the deployment gate reads them: the window still applies, comments are not
    # commands, and what is accepted is sent in canonical form.
    disguised = check_tuning("m221 s150\nM221 S90 ; M302\nm 221 s95", 210.0, ENDER3_250)
    assert disguised.accepted == ["M221 S90", "M221 S95"] and len(disguised.refused) == 1, disguised
    env = PrintSupervisorEnv(job=SMALL_JOB)
    env.reset(seed=0, options={"hidden": NOMINAL})
    _, nothing, *_ = env.step("")
    _, refused, *_, info = env.step("M221 S150\nG28")
    assert len(info["refused"]) == 2 and env.sim.state.extrude_factor == 1.0
    assert refused == pytest.approx(nothing - 1.0, abs=0.05)


def test_box_zero_action_is_doing_nothing() -> None:
    text = run_episode(PrintSupervisorEnv(job=SMALL_JOB), lambda o, k: "", seed=5)[1]
    box = run_episode(PrintSupervisorBoxEnv(job=SMALL_JOB), lambda o, k: np.zeros(5, np.float32), seed=5)[1]
    assert box == pytest.approx(text)


def test_nominal_physics_reproduce_the_reference() -> None:
    rewards = run_episode(PrintSupervisorEnv(job=SMALL_JOB), lambda o, k: "", 0, {"hidden": NOMINAL})[1]
    assert rewards == pytest.approx([1.0] * SMALL_JOB.layer_count, abs=1e-6)


def test_flow_compensates_a_thick_filament() -> None:
    hidden = {"hidden": HiddenPhysics(filament_diameter_factor=1.05)}
    env = PrintSupervisorEnv(job=SMALL_JOB)
    observations, nothing = run_episode(env, lambda o, k: "", 0, hidden)
    assert observations[1]["telemetry"][FIELD["volume_ratio"]] == pytest.approx(1.05 ** 2, rel=1e-3)
    assert "volume x1.102 expected" in observations[1]["prompt"]
    compensated = run_episode(env, lambda o, k: f"M221 S{100 / 1.05 ** 2:.1f}", 0, hidden)[1]
    assert max(nothing) < 0.6 and min(compensated) > 0.95


def test_slowing_and_heating_relieve_a_clog() -> None:
    hidden = {"hidden": HiddenPhysics(clog_layer=2, clog_flow_fraction=0.6)}
    env = PrintSupervisorEnv(job=SMALL_JOB)
    observations, nothing = run_episode(env, lambda o, k: "", 0, hidden)
    assert observations[3]["telemetry"][FIELD["delivered_fraction"]] < 0.75
    assert "under_extrusion" in observations[3]["prompt"] and nothing[2] < 0
    react = run_episode(env, lambda o, k: "M220 S55\nM104 S225" if k >= 3 else "", 0, hidden)[1]
    assert react[:3] == pytest.approx(nothing[:3])
    assert min(react[3:]) > 0.8 > max(nothing[3:]) and sum(react) > sum(nothing) + 4.0


def test_fan_command_overrides_the_reference() -> None:
    assert override_fan("G1 Z0.4\nM106 S255\nM107\n", 100) == "G1 Z0.4\nM106 S100\nM106 S100\n"
    env = PrintSupervisorEnv(job=SMALL_JOB)
    env.reset(seed=0)
    env.step("M106 S100")
    env.step("")
    assert env.sim.fan == pytest.approx(100 / 255 * env.hidden.fan_efficacy)


# -- wrappers ----------------------------------------------------------------------------------------------
def test_domain_randomization_is_seeded_and_in_range() -> None:
    ranges = RandomizationConfig().printer
    draws = []
    for _ in range(2):
        env = DomainRandomization(PrintSupervisorEnv(job=SMALL_JOB))
        _, info = env.reset(seed=4)
        draws.append(info["randomization"])
        profile = env.unwrapped.sim.profile
        factor = profile.max_velocity_mm_s / 300.0
        assert ranges.max_velocity_factor[0] <= factor <= ranges.max_velocity_factor[1]
        assert env.unwrapped.sim.state.settings.max_velocity == pytest.approx(profile.max_velocity_mm_s)
        env.step("")
    assert draws[0] == draws[1]
    for f in dataclasses.fields(ranges):
        lo, hi = getattr(ranges, f.name)
        assert lo <= draws[0][f.name] <= hi
    writer = DomainRandomization(gym.make("layerloop/GcodeWriter-v1", difficulty=0))
    writer.reset(seed=1)
    assert writer.unwrapped.sim.profile.hotend.power_w != 40.0


def test_sensor_noise_drops_and_delays() -> None:
    config = RandomizationConfig(sensor=SensorRanges(drop_probability=0.5, delay_steps=[1, 1]))
    env = SensorNoise(PrintSupervisorBoxEnv(job=SMALL_JOB), config)
    first, info = env.reset(seed=2)
    assert info["sensor_delay_steps"] == 1 and env.observation_space.contains(first)
    obs, *_ = env.step(np.zeros(5, np.float32))
    assert np.array_equal(obs, first)
    observations = run_episode(env, lambda o, k: np.zeros(5, np.float32), seed=2)[0]
    again = run_episode(env, lambda o, k: np.zeros(5, np.float32), seed=2)[0]
    assert all(np.array_equal(a, b) for a, b in zip(observations, again, strict=True))
    exact = [FIELD[name] for name in ("layers_done_fraction", "layer_count", "flow_factor")]
    clean = run_episode(PrintSupervisorBoxEnv(job=SMALL_JOB), lambda o, k: np.zeros(5, np.float32), seed=2)[0]
    assert np.array_equal(np.array(observations)[2:, exact], np.array(clean)[1:-1, exact])
    assert not np.array_equal(np.array(observations)[2:], np.array(clean)[1:-1])
    text = SensorNoise(PrintSupervisorEnv(job=SMALL_JOB), config)
    obs, _ = text.reset(seed=2)
    assert "prompt" in obs and text.observation_space.contains(obs)


def test_rare_faults_shift_clog_and_heater() -> None:
    always = RandomizationConfig(faults=FaultRanges(layer_shift_probability=1.0, layer_shift_mm=[2.0, 2.0],
                                                    clog_probability=1.0, clog_flow_fraction=[0.5, 0.5],
                                                    heater_fault_probability=1.0, heater_power_fraction=[0.9, 0.9]))
    env = RareFaults(PrintSupervisorEnv(job=SMALL_JOB), always)
    env.reset(seed=0, options={"hidden": NOMINAL})
    obs, reward, *_, info = env.step("")
    assert obs["telemetry"][FIELD["extent_error_mm"]] == pytest.approx(2.0, abs=0.3)
    assert [f.split()[0] for f in info["faults"]] == ["layer_shift", "clog:", "heater_fault:"]
    assert np.hypot(*env.unwrapped.shift_mm) == pytest.approx(2.0)
    assert env.unwrapped.sim.profile.hotend.power_w == pytest.approx(36.0)
    assert reward < 0.2  # the layer is 2 mm off: exp(-2) of its quality is left
    _, reward, *_, info = env.step("")  # the first layer is slow; the second needs more than the clog melts
    assert "under_extrusion" in info["failures"] and reward < 0
    none = RareFaults(PrintSupervisorEnv(job=SMALL_JOB), RandomizationConfig(faults=FaultRanges(
        layer_shift_probability=0.0, clog_probability=0.0, heater_fault_probability=0.0)))
    none.reset(seed=0, options={"hidden": NOMINAL})
    assert none.step("")[4]["faults"] == []


# -- learning ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ppo_beats_doing_nothing() -> None:
    """A tiny PPO budget (about 20 s of CPU) learns to correct the flow from the telemetry."""
    torch = pytest.importorskip("torch")
    sb3 = pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    torch.set_num_threads(1)
    venv = VecNormalize(DummyVecEnv([lambda: gym.make("layerloop/PrintSupervisorBox-v1", job=SMALL_JOB)]),
                        norm_obs=True, norm_reward=False)
    model = sb3.PPO("MlpPolicy", venv, n_steps=256, batch_size=64, learning_rate=1e-3, gamma=0.9, seed=0,
                    policy_kwargs={"log_std_init": -1.0, "net_arch": [64, 64]}, device="cpu")
    model.learn(total_timesteps=8000)
    venv.training = False

    def mean_return(policy: object) -> float:
        env = gym.make("layerloop/PrintSupervisorBox-v1", job=SMALL_JOB)
        return float(np.mean([sum(run_episode(env, policy, seed=10_000 + s)[1]) for s in range(30)]))

    # The trained model through the agent's SB3 adapter, as a user runs it.
    policy = SB3Policy(model, normalize=venv.normalize_obs)
    learned = mean_return(lambda o, k: policy(o))
    nothing = mean_return(lambda o, k: np.zeros(5, np.float32))
    assert learned > nothing + 0.5, (learned, nothing)



def test_program_edits_keep_untouched_lines_and_shift_only_moves() -> None:
    layer = ";LAYER_CHANGE\nG1 Z0.4 F300\nM106 S255\nG0 X100.225 Y100.225 F9000\r\ng1 x100.5 e0.2 ; wall\nM107"
    shifted = shift_xy(layer, 1.3, -0.5)
    assert shifted.splitlines(keepends=True)[:3] == layer.splitlines(keepends=True)[:3]
    assert "G0 X101.525 Y99.725 F9000\r\n" in shifted and "G1 X101.8 E0.2 ; wall\n" in shifted
    assert shifted.endswith("M107")
    assert override_fan(layer, 80).count("M106 S80") == 2 and "M107" not in override_fan(layer, 80)
    assert override_fan("N5 M106 S3\n", 0) == "M106 S0\n"
