//! Graph client tests against the simulator.
