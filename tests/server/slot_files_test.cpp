// llama.cpp's filename rules (fs_validate_filename) and the confinement of slot files.
#include "server/slot_files.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace kvstash {
namespace {

namespace fs = std::filesystem;

TEST(SlotFiles, FilenameRulesOfLlamaCpp) {
  for (const std::string& ok : std::vector<std::string>{"slot1.bin", ".gitignore", "a b", "caf\xc3\xa9", "x-y_z.state", std::string(255, 'a'), "\xf0\x9f\x98\x80"})
    EXPECT_TRUE(validate_slot_filename(ok)) << ok;
  for (const std::string& bad : std::vector<std::string>{"", ".", "..", "a..b", "../a", "a/b", "a\\b", " a", "a ", "a.", "a:b", "a*b", "a?b", "a\"b", "a<b", "a>b",
                                "a|b", std::string(256, 'a'), std::string("a\0b", 3), "a\x1f", "a\x7f", "a\xc2\x85" /* C1 */,
                                "\xef\xbc\x8e" /* U+FF0E */, "\xe2\x88\x95", "\xe2\x88\x96", "\xef\xbf\xbd", "\xef\xbb\xbf", "\xed\xa0\x80",
                                "\xc0\xae" /* overlong '.' */, "\xe0\x80\xaf", "\xff", "\xc3", "\xf4\x90\x80\x80", ".x.kvstash-tmp.12"})
    EXPECT_FALSE(validate_slot_filename(bad)) << bad;
}

TEST(SlotFiles, ResolveStaysInsideTheDirectory) {
  const fs::path root = fs::temp_directory_path() / ("kvstash_slotfiles_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root / "outside");
  { std::ofstream(root / "outside" / "secret") << "x"; }
  int n_stale = -1;
  auto dir = SlotDir::open((root / "saves").string(), &n_stale);
  ASSERT_TRUE(dir.is_ok()) << dir.status().to_string();
  EXPECT_EQ(n_stale, 0);
  fs::create_symlink(root / "outside" / "secret", root / "saves" / "link");
  { std::ofstream(root / "saves" / "real") << "y"; }
  fs::create_symlink(root / "saves" / "real", root / "saves" / "inner");
  EXPECT_EQ(*dir->resolve("new.bin"), (fs::canonical(root / "saves") / "new.bin").string());
  EXPECT_EQ(*dir->resolve("inner"), (fs::canonical(root / "saves") / "real").string());
  auto out = dir->resolve("link");
  ASSERT_FALSE(out.is_ok());
  EXPECT_NE(out.status().message().find("outside"), std::string::npos);
  EXPECT_FALSE(dir->resolve("../outside/secret").is_ok());
  bool exists = false;
  EXPECT_FALSE(dir->rename("real", "inner", &exists).is_ok());
  EXPECT_TRUE(exists);
  EXPECT_EQ(dir->remove("missing").code(), StatusCode::NotFound);
  EXPECT_FALSE(dir->remove("link").is_ok());
  EXPECT_TRUE(fs::exists(root / "outside" / "secret"));
  // Stale temp files of dead writers are removed when the directory is opened again.
  { std::ofstream(root / "saves" / ".x.bin.kvstash-tmp.999999999.0") << "partial"; }
  auto again = SlotDir::open((root / "saves").string(), &n_stale);
  ASSERT_TRUE(again.is_ok());
  EXPECT_EQ(n_stale, 1);
  fs::remove_all(root);
}

}  // namespace
}  // namespace kvstash
