// recipe_loader.hpp — YAML recipe → typed, validated Recipe.
//
//   load_recipe("recipes/nam56r.yaml", {"train.lr=1e-3"})
//
// Strict: unknown keys, wrong types, out-of-range values, bad pattern letters, depth mismatches and
// the geometry rules (validate.hpp) all throw ConfigError naming file:line:column, the key path, the
// rule and what is expected. `extends: base.yaml` (relative to the including file) inherits a recipe;
// later files and then --set overrides win, each validated the same way.
#pragma once
#include <string>
#include <vector>

#include "engine/config/recipe.hpp"

namespace megacpp {

Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides = {});

// Every key the loader knows, with its type and rule, e.g. for `megacpp plan --help-keys` and docs.
struct RecipeKeyInfo {
  std::string path, type, rule;
};
std::vector<RecipeKeyInfo> recipe_keys();

}  // namespace megacpp
