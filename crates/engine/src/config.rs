//! What an emulated logical unit supports; REPORT CAPABILITIES reports exactly this.

use serde::{Deserialize, Serialize};

/// Engine configuration for one logical unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// Most registrations the logical unit holds; beyond it REGISTER, REGISTER AND IGNORE
    /// EXISTING KEY and REGISTER AND MOVE answer INSUFFICIENT REGISTRATION RESOURCES.
    pub max_registrations: usize,
    /// Most unit attention conditions pending per I_T nexus.
    pub unit_attention_depth: usize,
    /// PTPL_C: APTPL=1 is accepted (the store keeps the state across power loss).
    pub ptpl_capable: bool,
    /// SIP_C: REGISTER accepts SPEC_I_PT=1 with a TransportID list.
    pub spec_i_pt_capable: bool,
    /// ATP_C: REGISTER and REGISTER AND IGNORE EXISTING KEY accept ALL_TG_PT=1.
    pub all_tg_pt_capable: bool,
}

impl Default for EngineConfig {
    /// Everything supported, 128 registrations, 8 unit attentions per I_T nexus.
    fn default() -> Self {
        EngineConfig {
            max_registrations: 128,
            unit_attention_depth: 8,
            ptpl_capable: true,
            spec_i_pt_capable: true,
            all_tg_pt_capable: true,
        }
    }
}
