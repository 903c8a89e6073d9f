"""Control: the Gymnasium env, the action space, the DQN agent, the shield and the tuning loop."""
