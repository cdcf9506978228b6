//! The SOP classes this node accepts as a Storage SCP.

pub const VERIFICATION: &str = "1.2.840.10008.1.1";
pub const CT_IMAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
pub const ENHANCED_CT_IMAGE: &str = "1.2.840.10008.5.1.4.1.1.2.1";
pub const RT_DOSE: &str = "1.2.840.10008.5.1.4.1.1.481.2";
pub const RT_STRUCTURE_SET: &str = "1.2.840.10008.5.1.4.1.1.481.3";
pub const RT_PLAN: &str = "1.2.840.10008.5.1.4.1.1.481.5";
pub const RT_ION_PLAN: &str = "1.2.840.10008.5.1.4.1.1.481.8";

/// Storage SOP classes accepted, with their names for logs and documents.
pub const STORAGE: &[(&str, &str)] = &[
    (CT_IMAGE, "CT Image Storage"),
    (ENHANCED_CT_IMAGE, "Enhanced CT Image Storage"),
    (RT_DOSE, "RT Dose Storage"),
    (RT_STRUCTURE_SET, "RT Structure Set Storage"),
    (RT_PLAN, "RT Plan Storage"),
    (RT_ION_PLAN, "RT Ion Plan Storage"),
];

/// Human name of an accepted SOP class (or of the SR esorisk sends), or
/// the UID itself.
pub fn name(uid: &str) -> &str {
    if uid == VERIFICATION {
        return "Verification";
    }
    if uid == crate::report::sr::COMPREHENSIVE_SR {
        return "Comprehensive SR Storage";
    }
    STORAGE
        .iter()
        .find(|(u, _)| *u == uid)
        .map(|(_, n)| *n)
        .unwrap_or(uid)
}

pub fn is_storage(uid: &str) -> bool {
    STORAGE.iter().any(|(u, _)| *u == uid)
}
