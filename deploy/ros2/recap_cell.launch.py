"""A robot's cell on a real arm: the recap bridge and, optionally, the leader arm used for teleoperation,
in the robot's namespace. The same bridge command as the systemd unit (deploy/systemd/recap-bridge@.service):

    ros2 launch deploy/ros2/recap_cell.launch.py robot:=cell-a-arm-1 \\
        [params:=/etc/recap/robots/cell-a-arm-1.yaml] [python:=/opt/recap/.venv/bin/python] \\
        [leader_launch:=/opt/lab/launch/leader_arm.launch.py]

- `robot`: the robot id; the bridge runs in its namespace (/cell_a_arm_1, '-' and '.' as '_').
- `params`: the bridge's parameters (start from deploy/ros2/bridge_ros2_control.yaml); default
  /etc/recap/robots/<robot>.yaml, as the unit reads.
- `python`: the interpreter that has recap installed (a venv made with `--system-site-packages` on a
  sourced /opt/ros/<distro>, see deploy/README.md); default: the one running `ros2 launch`.
- `leader_launch`: the lab's launch file for the leader arm's driver (its own ros2_control stack),
  included in `<robot namespace>/leader`, where the parameters file expects `leader/joint_states` and
  `leader/engage`. Empty: no leader arm (e.g. a spacemouse driver started elsewhere).

The bridge is a Python module, not an ament package, so it starts as a process (ExecuteProcess) with
the same arguments as the unit; tokens come from the file named in the parameters, never from here.
The module imports `launch` only inside generate_launch_description, so `bridge_command` is usable
(and tested) where the launch packages are not installed."""

from __future__ import annotations

import sys

DEFAULT_PARAMS = "/etc/recap/robots/{robot}.yaml"


def bridge_command(robot: str, params: str | None = None, python: str | None = None) -> list[str]:
    """The bridge's command line, the unit's ExecStart for robot `robot`."""
    return [python or sys.executable, "-m", "robot_bridge.bridge_node", "--robot", robot,
            "--ros-args", "--params-file", params or DEFAULT_PARAMS.format(robot=robot)]


def generate_launch_description():
    from launch import LaunchDescription
    from launch.actions import (DeclareLaunchArgument, ExecuteProcess, GroupAction, IncludeLaunchDescription,
                                OpaqueFunction)
    from launch.conditions import IfCondition
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    from launch.substitutions import LaunchConfiguration, PythonExpression

    def cell(context):
        robot = LaunchConfiguration("robot").perform(context)
        params = LaunchConfiguration("params").perform(context) or None
        python = LaunchConfiguration("python").perform(context) or None
        from robot_bridge.ros import robot_namespace

        ns = robot_namespace(robot)
        actions = [ExecuteProcess(cmd=bridge_command(robot, params, python), name=f"recap_bridge_{ns[1:]}",
                                  output="screen", sigterm_timeout="20")]  # the unit's TimeoutStopSec
        leader = LaunchConfiguration("leader_launch")
        from launch_ros.actions import PushRosNamespace

        actions.append(GroupAction(
            [PushRosNamespace(f"{ns}/leader"),
             IncludeLaunchDescription(PythonLaunchDescriptionSource(leader))],
            condition=IfCondition(PythonExpression(["'", leader, "' != ''"]))))
        return actions

    return LaunchDescription([
        DeclareLaunchArgument("robot", description="robot id (its namespace: /<robot> with '-' and '.' as '_')"),
        DeclareLaunchArgument("params", default_value="", description="bridge parameters [/etc/recap/robots/<robot>.yaml]"),
        DeclareLaunchArgument("python", default_value="", description="interpreter with recap installed"),
        DeclareLaunchArgument("leader_launch", default_value="", description="the leader arm driver's launch file"),
        OpaqueFunction(function=cell),
    ])
