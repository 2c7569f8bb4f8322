#include "engine/text_stream.h"

#include <gtest/gtest.h>

namespace kvstash {
namespace {

std::string feed(TextStream& ts, const std::vector<std::string>& pieces, bool* stopped) {
  std::string out;
  *stopped = false;
  for (const auto& p : pieces) {
    out += ts.push(p, stopped);
    if (*stopped) return out;
  }
  return out + ts.flush();
}

TEST(TextStream, PassesTextThroughWithoutStops) {
  TextStream ts;
  bool stopped;
  EXPECT_EQ(feed(ts, {"Once", " upon", " a", " time"}, &stopped), "Once upon a time");
  EXPECT_FALSE(stopped);
}

TEST(TextStream, StopStringAcrossPiecesIsCutAndHeldBackUntilDecided) {
  TextStream ts({"girl named"});
  bool stopped = false;
  EXPECT_EQ(ts.push("a little ", &stopped), "a little ");
  EXPECT_EQ(ts.push("gi", &stopped), "");  // could be the start of the stop string
  EXPECT_EQ(ts.push("rl na", &stopped), "");
  EXPECT_EQ(ts.push("med Lily", &stopped), "");
  EXPECT_TRUE(stopped);
  EXPECT_EQ(ts.stopping_word(), "girl named");
  EXPECT_EQ(ts.push("more", &stopped), "");
}

TEST(TextStream, FalseStartIsReleased) {
  TextStream ts({"girl named"});
  bool stopped = false;
  EXPECT_EQ(ts.push("a gi", &stopped), "a ");
  EXPECT_EQ(ts.push("ft", &stopped), "gift");
  EXPECT_FALSE(stopped);
}

TEST(TextStream, EarliestStopWins) {
  TextStream ts({"c", "ab"});
  bool stopped = false;
  EXPECT_EQ(ts.push("xxabc", &stopped), "xx");
  EXPECT_EQ(ts.stopping_word(), "ab");
}

TEST(TextStream, IncompleteUtf8IsHeldUntilComplete) {
  TextStream ts;
  bool stopped = false;
  EXPECT_EQ(ts.push("caf\xc3", &stopped), "caf");
  EXPECT_EQ(ts.push("\xa9!", &stopped), "\xc3\xa9!");
  EXPECT_EQ(ts.push("\xe2\x82", &stopped), "");
  EXPECT_EQ(ts.push("\xac", &stopped), "\xe2\x82\xac");
  EXPECT_EQ(TextStream::incomplete_utf8_tail("a\xf0\x9f\x98"), 3u);
  EXPECT_EQ(TextStream::incomplete_utf8_tail("a\xf0\x9f\x98\x80"), 0u);
  EXPECT_EQ(TextStream::incomplete_utf8_tail("\x80\x80\x80\x80"), 0u);
  // At the end, whatever is held is released.
  EXPECT_EQ(ts.push("\xc3", &stopped), "");
  EXPECT_EQ(ts.flush(), "\xc3");
}

}  // namespace
}  // namespace kvstash
