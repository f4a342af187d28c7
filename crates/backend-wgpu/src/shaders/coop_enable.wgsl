// The extensions mm_coop.wgsl needs (enable directives come before any
// declaration, so this file starts that shader).
enable f16;
enable wgpu_cooperative_matrix;
